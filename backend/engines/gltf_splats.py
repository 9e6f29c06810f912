"""The Gaussians in glTF: a ``KHR_gaussian_splatting`` point primitive that follows the head.

Three ways to make the splats move, chosen by ``mode``:

* ``"skinned"`` (default): one POINTS primitive at the **rest** pose (the rig's basis mesh, where the
  skin's bind pose is), skinned to the head's skin with ``JOINTS_0``/``WEIGHTS_0`` = the parent
  triangle's LBS weights (mean of its three vertices, 4 strongest, renormalised) and with one morph
  target per head blendshape: the POSITION delta of each splat centre when that blendshape is applied
  at weight 1, evaluated through the triangle binding (:func:`backend.avatar.binding_np.local_to_world_np`).
  Any engine that skins and morphs points moves every splat centre with the head; a splat renderer
  that also rotates splats by the skin (Spark's ``SplatSkinning``, our web player) is exact up to the
  linearisation of the binding.
* ``"rigid"``: for engines that ignore skinned points: the splats are grouped by their triangle's
  dominant joint and each group is a child node of that joint (positions relative to it), so the
  groups follow head, neck and jaw rigidly; no morph targets.
* ``"static"``: the splats of the baked frame in world space, no rig link (any splat viewer).

Every primitive also carries ``COLOR_0`` (the SH0 colour, decoded to linear as glTF requires, with the
opacity in alpha) for viewers without the extension, and the triangle binding as ``_``-prefixed
attributes (standard viewers ignore them): ``_BINDING_FACE_XYZ`` (parent face index as float, then the
triangle-local position), ``_BINDING_ROTATION`` (triangle-local xyzw) and ``_BINDING_LOG_SCALE``
(triangle-relative log scale, 0). All three are float VEC4 on purpose: Blender 4.5's glTF importer
pairs custom attributes with their data through a ``set`` and crashes when they differ in size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..avatar.binding_np import local_to_world_np
from .gltf_builder import ARRAY_BUFFER, UBYTE, USHORT, GltfBuilder, top4, xyzw
from .gltf_rig import RigExport

SPLAT_EXT = "KHR_gaussian_splatting"
SPLAT_MODES = ("skinned", "rigid", "static")
SH_C0 = 0.28209479177387814


@dataclass
class SplatExport:
    """Splats of the baked frame (world, glTF axes) and their triangle binding."""

    position: np.ndarray  # (N, 3)
    rotation: np.ndarray  # (N, 4) wxyz
    scale: np.ndarray  # (N, 3) linear
    opacity: np.ndarray  # (N,) linear
    sh: np.ndarray  # (N, K, 3)
    parent_face: np.ndarray  # (N,)
    local_position: np.ndarray  # (N, 3) triangle-local (fine detail of the baked frame included)
    local_rotation: np.ndarray  # (N, 4) wxyz
    local_log_scale: np.ndarray  # (N, 3)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def color0(s: SplatExport, color_space: str) -> np.ndarray:
    """(N, 4) linear RGB of SH degree 0 and the opacity: glTF's COLOR_0."""
    rgb = np.clip(0.5 + SH_C0 * np.asarray(s.sh[:, 0, :], np.float64), 0.0, 1.0)
    if color_space.startswith("srgb"):
        rgb = srgb_to_linear(rgb)
    return np.concatenate([rgb, np.clip(s.opacity, 0.0, 1.0).reshape(-1, 1)], axis=1)


def at_vertices(s: SplatExport, vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World (positions, wxyz rotations, linear scales) of the splats on the mesh ``vertices``."""
    pos, quat, log_s = local_to_world_np(s.parent_face, s.local_position, s.local_rotation, s.local_log_scale,
                                         vertices, faces)
    return pos, quat, np.exp(log_s)


def morph_deltas(s: SplatExport, rig: RigExport, rest_position: np.ndarray) -> np.ndarray:
    """(M, N, 3): splat centre displacement under each head blendshape at weight 1, through the binding."""
    out = np.empty((len(rig.target_names), s.position.shape[0], 3), np.float64)
    for k, d in enumerate(rig.target_deltas):
        pos, _, _ = local_to_world_np(s.parent_face, s.local_position, s.local_rotation, s.local_log_scale,
                                      np.asarray(rig.rest_vertices, np.float64) + d, rig.faces)
        out[k] = pos - rest_position
    return out


def face_weights(s: SplatExport, rig: RigExport) -> np.ndarray:
    """(N, J) LBS weights of each splat: the mean of its parent triangle's three vertices."""
    tri = np.asarray(rig.faces, np.int64)[np.asarray(s.parent_face, np.int64)]
    return np.asarray(rig.lbs_weights, np.float64)[tri].mean(axis=1)


def _primitive(b: GltfBuilder, s: SplatExport, idx: np.ndarray, pos: np.ndarray, quat: np.ndarray,
               scale: np.ndarray, color_space: str) -> dict:
    n = len(idx)
    attrs = {
        "POSITION": b.accessor(pos, components=3, target=ARRAY_BUFFER, minmax=True),
        "COLOR_0": b.accessor(np.rint(color0(s, color_space)[idx] * 255.0), components=4, ctype=UBYTE,
                              target=ARRAY_BUFFER, normalized=True),
        f"{SPLAT_EXT}:ROTATION": b.accessor(xyzw(quat), components=4, target=ARRAY_BUFFER),
        f"{SPLAT_EXT}:SCALE": b.accessor(scale, components=3, target=ARRAY_BUFFER),
        f"{SPLAT_EXT}:OPACITY": b.accessor(s.opacity[idx].reshape(n, 1), components=1, target=ARRAY_BUFFER),
    }
    K = s.sh.shape[1]
    k = 0
    for deg in range(int(round(np.sqrt(K)))):
        for c in range(2 * deg + 1):
            attrs[f"{SPLAT_EXT}:SH_DEGREE_{deg}_COEF_{c}"] = b.accessor(s.sh[idx, k, :], components=3,
                                                                      target=ARRAY_BUFFER)
            k += 1
    face_xyz = np.concatenate([s.parent_face[idx].astype(np.float64).reshape(n, 1), s.local_position[idx]], axis=1)
    attrs["_BINDING_FACE_XYZ"] = b.accessor(face_xyz, components=4, target=ARRAY_BUFFER)
    attrs["_BINDING_ROTATION"] = b.accessor(xyzw(s.local_rotation[idx]), components=4, target=ARRAY_BUFFER)
    log_s = np.concatenate([s.local_log_scale[idx], np.zeros((n, 1))], axis=1)
    attrs["_BINDING_LOG_SCALE"] = b.accessor(log_s, components=4, target=ARRAY_BUFFER)
    return {"attributes": attrs, "mode": 0, "extensions": {SPLAT_EXT: {
        "kernel": "ellipse", "colorSpace": color_space, "projection": "perspective",
        "sortingMethod": "cameraDistance"}}}


_EXTRAS = {"mvp4d_binding": "world = s R xyz + c per parent face of the 'head' mesh (GaussianAvatars frame); "
                            "_BINDING_FACE_XYZ = (face, x, y, z), _BINDING_ROTATION = local xyzw, "
                            "_BINDING_LOG_SCALE = (log sx, log sy, log sz, 0) relative to the face size"}


def add_splats(b: GltfBuilder, s: SplatExport, rig: RigExport | None, joint_nodes: list[int], mode: str,
               color_space: str) -> tuple[list[int], list[int]]:
    """Add the splats; returns (scene root nodes, nodes whose morph weights the animation drives)."""
    if mode not in SPLAT_MODES:
        raise ValueError(f"splat mode must be one of {SPLAT_MODES}, not {mode!r}")
    b.use_extension(SPLAT_EXT)
    n = s.position.shape[0]
    every = np.arange(n)
    if rig is None or mode == "static":
        mesh = b.add("meshes", {"name": "splats", "primitives": [
            _primitive(b, s, every, s.position, s.rotation, s.scale, color_space)]})
        return [b.add("nodes", {"name": "splats", "mesh": mesh, "extras": dict(_EXTRAS, mvp4d_splats="static")})], []
    pos, quat, scale = at_vertices(s, rig.rest_vertices, rig.faces)
    weights = face_weights(s, rig)
    if mode == "rigid":
        dominant = np.argmax(weights, axis=1)
        for j in np.unique(dominant):
            idx = np.flatnonzero(dominant == j)
            prim = _primitive(b, s, idx, pos[idx] - rig.joint_rest[j], quat[idx], scale[idx], color_space)
            mesh = b.add("meshes", {"name": f"splats_{rig.joint_names[j]}", "primitives": [prim]})
            node = b.add("nodes", {"name": f"splats_{rig.joint_names[j]}", "mesh": mesh,
                                   "extras": dict(_EXTRAS, mvp4d_splats="rigid")})
            b.doc["nodes"][joint_nodes[j]].setdefault("children", []).append(node)
        return [], []
    prim = _primitive(b, s, every, pos, quat, scale, color_space)
    joints_idx, joints_w = top4(weights)
    prim["attributes"]["JOINTS_0"] = b.accessor(joints_idx, components=4, ctype=USHORT, target=ARRAY_BUFFER)
    prim["attributes"]["WEIGHTS_0"] = b.accessor(joints_w, components=4, target=ARRAY_BUFFER)
    mesh: dict = {"name": "splats", "primitives": [prim]}
    if len(rig.target_names):
        prim["targets"] = [{"POSITION": b.accessor(d, components=3, target=ARRAY_BUFFER, minmax=True)}
                           for d in morph_deltas(s, rig, pos)]
        mesh["weights"] = [0.0] * len(rig.target_names)
        mesh["extras"] = {"targetNames": list(rig.target_names)}
    node = b.add("nodes", {"name": "splats", "mesh": b.add("meshes", mesh), "skin": 0,
                           "extras": dict(_EXTRAS, mvp4d_splats="skinned")})
    return [node], [node] if len(rig.target_names) else []
