"""An avatar bundle as glTF data (numpy): the head rig from its FLAME model, and its splats.

The rig follows the Blender add-on's own (``mvp4d_blender/blender/export.py``), so both exports
write the same file: morph targets = the expression blendshapes (the bundle's E, named as the model
names them) then one pose corrective per non-zero ``posedirs`` column, named ``pose_<joint>_<ab>``
and driven by entry (a, b) of ``R_joint - I``; joints regressed from the bundle's rest mesh; joint
rotations from the bundle's axis-angle poses; the root translation from ``transl``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..avatar.binding_np import local_to_world_np
from ..avatar.bundle import AvatarBundle
from ..errors import MVP4DError
from .gltf_rig import RigExport
from .gltf_splats import SplatExport

if TYPE_CHECKING:  # backend.flame's package imports torch; this module needs only the arrays
    from ..flame.model import FlameModel


def axis_angle_to_quat_np(aa: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle (radians) -> (..., 4) unit wxyz."""
    aa = np.asarray(aa, np.float64)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)
    k = np.where(theta > 1e-8, np.sin(0.5 * theta) / np.maximum(theta, 1e-300), 0.5 - theta * theta / 48.0)
    return np.concatenate([np.cos(0.5 * theta), aa * k], axis=-1)


def quat_to_matrix_np(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, np.float64)
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _check_model(bundle: AvatarBundle, model: FlameModel) -> None:
    V = bundle.rest_vertices.shape[0]
    wanted = str(bundle.metadata.get("flame_model_id", "unknown"))
    if model.v_template.shape[0] != V or not np.array_equal(np.asarray(model.faces), np.asarray(bundle.faces)):
        raise MVP4DError("BAD_INPUT", f"the head model {model.model_id} does not match the avatar's mesh "
                         f"({model.v_template.shape[0]} vs {V} vertices)",
                         f"Pass --flame with the head model the avatar was made with ({wanted}).")
    if bundle.expr.shape[1] > model.exprdirs.shape[2]:
        raise MVP4DError("BAD_INPUT", f"the avatar animates {bundle.expr.shape[1]} expressions but the head model "
                         f"{model.model_id} has {model.exprdirs.shape[2]}",
                         f"Pass --flame with the head model the avatar was made with ({wanted}).")


def rig_from_bundle(bundle: AvatarBundle, model: FlameModel) -> RigExport:
    """The head rig (morph targets, skin, per-frame animation) of ``bundle`` driven by ``model``."""
    from ..flame.model import JOINT_NAMES

    _check_model(bundle, model)
    T, E = bundle.expr.shape
    J = int(model.parents.shape[0])
    jnames = [JOINT_NAMES[j] if j < len(JOINT_NAMES) else f"joint{j}" for j in range(J)]
    expr_names = list(model.expression_names or [])[:E]
    if len(expr_names) != E:
        expr_names = [f"exp{i:03d}" for i in range(E)]
    rest = np.asarray(bundle.rest_vertices, np.float64)
    pose = np.concatenate([bundle.global_rot, bundle.neck_pose, bundle.jaw_pose, bundle.eye_pose], axis=1)
    pose = pose.reshape(T, -1, 3).astype(np.float64)
    if pose.shape[1] < J:
        pose = np.concatenate([pose, np.zeros((T, J - pose.shape[1], 3))], axis=1)
    quats = axis_angle_to_quat_np(pose[:, :J])  # (T, J, 4)
    names = list(expr_names)
    deltas = [np.asarray(model.exprdirs[:, :, i], np.float64) for i in range(E)]
    weights = [np.asarray(bundle.expr, np.float64)[:, i] for i in range(E)]
    R = quat_to_matrix_np(quats)
    nonzero = np.abs(model.posedirs).reshape(-1, model.posedirs.shape[2]).max(axis=0) > 0
    for k in np.nonzero(nonzero)[0]:
        j, a, b = 1 + k // 9, (k % 9) // 3, k % 3
        names.append(f"pose_{jnames[j]}_{a}{b}")
        deltas.append(np.asarray(model.posedirs[:, :, k], np.float64))
        weights.append(R[:, j, a, b] - (1.0 if a == b else 0.0))
    fps = float(bundle.fps)
    return RigExport(rest_vertices=rest, faces=np.asarray(bundle.faces, np.int64), target_names=names,
                     target_deltas=np.stack(deltas) if deltas else np.zeros((0, rest.shape[0], 3)),
                     joint_names=jnames, joint_rest=np.asarray(model.J_regressor, np.float64) @ rest,
                     parents=np.asarray(model.parents, np.int64), lbs_weights=np.asarray(model.lbs_weights),
                     times=np.arange(T, dtype=np.float64) / fps,
                     morph_weights=np.stack(weights, axis=1) if weights else np.zeros((T, 0)),
                     joint_rotations=quats, root_translation=np.asarray(bundle.transl, np.float64))


def splats_from_bundle(bundle: AvatarBundle, frame: int = 0) -> SplatExport:
    """The splats of ``frame`` (world) and their binding, that frame's fine detail baked into the local position."""
    local = np.asarray(bundle.local_position, np.float64)
    if bundle.detail_offsets is not None:
        local = local + np.asarray(bundle.detail_offsets[frame], np.float64)
    pos, quat, log_s = local_to_world_np(bundle.parent_face, local, bundle.local_rotation, bundle.log_scale,
                                         bundle.vertices[frame], bundle.faces)
    return SplatExport(position=pos, rotation=quat, scale=np.exp(log_s),
                       opacity=1.0 / (1.0 + np.exp(-np.asarray(bundle.opacity_logit, np.float64))),
                       sh=np.asarray(bundle.sh, np.float32), parent_face=np.asarray(bundle.parent_face, np.int64),
                       local_position=local, local_rotation=np.asarray(bundle.local_rotation, np.float64),
                       local_log_scale=np.asarray(bundle.log_scale, np.float64))
