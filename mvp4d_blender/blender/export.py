"""Exports of an imported avatar: 3DGS PLY of a frame, a PLY per frame, and a rigged .glb.

Everything is written in the rig's FLAME frame (glTF axes: +y up, metres), so the PLY, the glTF head
and its splats line up with each other and with the backend's own outputs. Splat values come from the
Geometry Nodes evaluation (what the viewport shows); the head's morph targets, skin and animation come
from the rig (shape keys, bones, F-curves).
"""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np

from ..io.binding import matrix_to_quat, quat_multiply, quat_to_matrix
from ..io.gltf import RigExport, SplatExport, write_avatar_glb
from ..io.ply import Splats, write_splat_ply
from . import avatar as avatarmod, camera_objects as camops, models, rig as rigmod, rig_params

FORMATS = [("PLY", "3DGS PLY (frame)", "Gaussians of one frame as an INRIA 3DGS .ply"),
           ("PLY_SEQUENCE", "PLY per frame", "One 3DGS .ply per frame of the scene range, in a folder"),
           ("GLB", "glTF binary (.glb)", "Head mesh with morph targets, skin and animation + KHR_gaussian_splatting")]


def splats_at_frame(scene, obj, frame: int) -> dict[str, np.ndarray]:
    """The avatar's splats at ``frame`` in its rig's FLAME frame (positions, wxyz, linear scales)."""
    cur = scene.frame_current
    if frame != cur:
        scene.frame_set(frame)
    try:
        s = avatarmod.evaluated_splats(obj, bpy.context.evaluated_depsgraph_get(), space="WORLD")
    finally:
        if frame != cur:
            scene.frame_set(cur)
    rig = obj.get("mvp4d_rig")
    inv = np.linalg.inv(camops.rig_frame(rig))
    to_flame = rigmod.FLAME_TO_BLENDER_ROTATION.T @ inv[:3, :3]
    s["position"] = s["position"] @ to_flame.T + rigmod.FLAME_TO_BLENDER_ROTATION.T @ inv[:3, 3]
    s["rotation"] = quat_multiply(np.broadcast_to(matrix_to_quat(to_flame), s["rotation"].shape), s["rotation"])
    return s


def _ply_splats(s: dict) -> Splats:
    return Splats(position=s["position"], rotation=s["rotation"], log_scale=np.log(np.maximum(s["scale"], 1e-30)),
                  opacity_logit=s["opacity_logit"], sh=s["sh"])


def export_ply(scene, obj, path: str | Path, frame: int) -> Path:
    return write_splat_ply(path, _ply_splats(splats_at_frame(scene, obj, frame)))


def export_ply_sequence(scene, obj, folder: str | Path, frames: range) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [write_splat_ply(folder / f"{f:04d}.ply", _ply_splats(splats_at_frame(scene, obj, f))) for f in frames]


def rig_export(scene, rig) -> RigExport:
    """The rig as glTF data: basis, morph targets (expressions + correctives), skin, animation."""
    keys = rig.data.shape_keys.key_blocks
    V = len(rig.data.vertices)
    basis = rigmod.rest_vertices_flame(rig)
    names = [kb.name for kb in keys[1:]]
    buf = np.empty(V * 3, np.float32)
    deltas = np.empty((len(names), V, 3))
    for i, kb in enumerate(keys[1:]):
        kb.data.foreach_get("co", buf)
        deltas[i] = rigmod.to_flame(buf.reshape(V, 3)) - basis
    arm = rigmod.armature_of(rig)
    jnames = rigmod.joint_names(rig)
    model = models.model_of_rig(rig)
    if arm is None or model is None:
        raise ValueError(f"the rig '{rig.name}' has lost its armature or head model; add the rig again")
    joints = rigmod.to_flame(np.array([arm.data.bones[n].head_local for n in jnames]))
    parents = np.array(rig.get("mvp4d_joint_parents", model.parents.tolist()), dtype=np.int64)
    frames = np.arange(scene.frame_start, scene.frame_end + 1, dtype=np.float64)
    seq = rig_params.read_sequence(rig, frames)
    quat_order = ("root", "neck", "jaw", "eye_left", "eye_right")
    quats = {n: seq["_quaternions"][:, quat_order.index(n)] if n in quat_order else
             np.tile([1.0, 0, 0, 0], (len(frames), 1)) for n in jnames}
    expr_names = rigmod.expression_names(rig)
    weights = np.zeros((len(frames), len(names)))
    for i, nm in enumerate(names):
        if nm in expr_names:
            weights[:, i] = seq["expr"][:, expr_names.index(nm)]
        elif nm.startswith("pose_"):  # pose_<bone>_<a><b>: entry (a, b) of R - I of that bone
            bone, ab = nm[5:].rsplit("_", 1)
            R = quat_to_matrix(quats[bone])
            weights[:, i] = R[:, int(ab[0]), int(ab[1])] - (1.0 if ab[0] == ab[1] else 0.0)
    fps = scene.render.fps / (scene.render.fps_base or 1.0)
    return RigExport(rest_vertices=basis, faces=rigmod.faces_of(rig.data), target_names=names, target_deltas=deltas,
                     joint_names=jnames, joint_rest=joints, parents=parents, lbs_weights=model.lbs_weights,
                     times=(frames - frames[0]) / fps, morph_weights=weights,
                     joint_rotations=np.stack([quats[n] for n in jnames], axis=1),
                     root_translation=seq["transl"].astype(np.float64))


def export_glb(scene, obj, path: str | Path, frame: int) -> Path:
    rig = obj.get("mvp4d_rig")
    if not rigmod.is_rig(rig):
        raise ValueError("the avatar has no rig; re-import it with a rig")
    s = splats_at_frame(scene, obj, frame)
    splats = SplatExport(position=s["position"], rotation=s["rotation"], scale=s["scale"],
                         opacity=1.0 / (1.0 + np.exp(-s["opacity_logit"].astype(np.float64))), sh=s["sh"],
                         parent_face=s["parent_face"], local_position=s["local_position"],
                         local_rotation=s["local_rotation"], local_log_scale=s["log_scale"])
    return write_avatar_glb(path, rig_export(scene, rig), splats)
