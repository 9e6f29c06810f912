"""The head in glTF: FLAME joints as nodes, one skin, the head mesh (optional proxy) and the animation.

All in glTF axes (+y up, metres; equal to FLAME space). Joint nodes carry only translations at rest
(FLAME's bind pose has no joint rotations), so each inverse bind matrix is a translation. The head
mesh has one morph target per expression and pose-corrective blendshape (``mesh.extras.targetNames``
names them as Blender's importer expects); the animation drives joint rotations, the root's
translation and the morph weights of every node listed (the head and the splats share them).

The head mesh is a *proxy* for the splats: ``"visible"`` draws it (with normals and a non-metallic
material, so engines shade it sensibly), ``"hidden"`` keeps it in the file for gameplay (collisions,
retargeting) behind ``KHR_node_visibility`` (``visible: false``), ``"none"`` leaves it out (the skin
and animation remain for the splats).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .gltf_builder import ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER, UINT, USHORT, GltfBuilder, top4, xyzw

PROXY_MODES = ("none", "hidden", "visible")
VISIBILITY_EXT = "KHR_node_visibility"


@dataclass
class RigExport:
    """The head: rest mesh, morph targets, skin and per-frame animation (glTF axes)."""

    rest_vertices: np.ndarray  # (V, 3) basis (identity baked)
    faces: np.ndarray  # (F, 3)
    target_names: list[str]
    target_deltas: np.ndarray  # (M, V, 3)
    joint_names: list[str]
    joint_rest: np.ndarray  # (J, 3) rest joint positions
    parents: np.ndarray  # (J,)
    lbs_weights: np.ndarray  # (V, J)
    times: np.ndarray  # (T,) seconds
    morph_weights: np.ndarray  # (T, M)
    joint_rotations: np.ndarray  # (T, J, 4) wxyz, local to the parent
    root_translation: np.ndarray  # (T, 3) offset of the root joint from its rest position

    @property
    def root(self) -> int:
        return next(j for j in range(len(self.joint_names)) if int(self.parents[j]) < 0)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3); +y for an isolated vertex."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.where(length > 1e-20, n / np.maximum(length, 1e-20), np.array([0.0, 1.0, 0.0]))


def add_skeleton(b: GltfBuilder, rig: RigExport) -> list[int]:
    """Joint nodes (translations at rest) and skin 0; returns the joint node indices."""
    J = len(rig.joint_names)
    first = len(b.doc.setdefault("nodes", []))
    for j in range(J):
        p = int(rig.parents[j])
        t = rig.joint_rest[j] - (rig.joint_rest[p] if p >= 0 else 0.0)
        b.add("nodes", {"name": rig.joint_names[j], "translation": [float(x) for x in t]})
    for j in range(J):
        kids = [first + k for k in range(J) if int(rig.parents[k]) == j]
        if kids:
            b.doc["nodes"][first + j]["children"] = kids
    ibm = np.tile(np.eye(4), (J, 1, 1))
    ibm[:, :3, 3] = -rig.joint_rest
    ibm_acc = b.accessor(np.transpose(ibm, (0, 2, 1)).reshape(J, 16), components=16)  # column-major
    b.add("skins", {"name": "flame", "joints": [first + j for j in range(J)], "inverseBindMatrices": ibm_acc,
                    "skeleton": first + rig.root})
    return [first + j for j in range(J)]


def add_head(b: GltfBuilder, rig: RigExport, proxy: str) -> int | None:
    """The skinned, morphing head mesh node (None when ``proxy == "none"``)."""
    if proxy not in PROXY_MODES:
        raise ValueError(f"head proxy must be one of {PROXY_MODES}, not {proxy!r}")
    if proxy == "none":
        return None
    V = rig.rest_vertices.shape[0]
    joints_idx, joints_w = top4(rig.lbs_weights)
    prim = {
        "attributes": {
            "POSITION": b.accessor(rig.rest_vertices, components=3, target=ARRAY_BUFFER, minmax=True),
            "NORMAL": b.accessor(vertex_normals(rig.rest_vertices, rig.faces), components=3, target=ARRAY_BUFFER),
            "JOINTS_0": b.accessor(joints_idx, components=4, ctype=USHORT, target=ARRAY_BUFFER),
            "WEIGHTS_0": b.accessor(joints_w, components=4, target=ARRAY_BUFFER),
        },
        "indices": b.accessor(rig.faces.astype(np.uint32), components=1, ctype=UINT, target=ELEMENT_ARRAY_BUFFER),
        "mode": 4,
        "material": b.add("materials", {"name": "head_proxy", "pbrMetallicRoughness": {
            "baseColorFactor": [0.8, 0.66, 0.58, 1.0], "metallicFactor": 0.0, "roughnessFactor": 0.7}}),
    }
    if len(rig.target_names):
        prim["targets"] = [{"POSITION": b.accessor(d.reshape(V, 3), components=3, target=ARRAY_BUFFER, minmax=True)}
                           for d in rig.target_deltas]
    mesh = {"name": "head", "primitives": [prim], "extras": {"targetNames": list(rig.target_names)}}
    if len(rig.target_names):
        mesh["weights"] = [0.0] * len(rig.target_names)
    node = {"name": "head", "mesh": b.add("meshes", mesh), "skin": 0, "extras": {"mvp4d_proxy": proxy}}
    if proxy == "hidden":
        node["extensions"] = {VISIBILITY_EXT: {"visible": False}}
        b.use_extension(VISIBILITY_EXT)
    return b.add("nodes", node)


def add_animation(b: GltfBuilder, rig: RigExport, joint_nodes: list[int], weight_nodes: list[int]) -> None:
    """One LINEAR animation: joint rotations, the root's translation, morph weights on ``weight_nodes``."""
    if len(rig.times) < 2:
        return
    t_acc = b.accessor(rig.times, components=1, minmax=True)
    samplers: list[dict] = []
    channels: list[dict] = []

    def channel(node: int, path: str, output: int) -> None:
        samplers.append({"input": t_acc, "output": output, "interpolation": "LINEAR"})
        channels.append({"sampler": len(samplers) - 1, "target": {"node": node, "path": path}})

    if rig.morph_weights.shape[1] and weight_nodes:
        w_acc = b.accessor(rig.morph_weights.reshape(-1), components=1)
        for node in weight_nodes:
            channel(node, "weights", w_acc)
    for j, node in enumerate(joint_nodes):
        channel(node, "rotation", b.accessor(xyzw(rig.joint_rotations[:, j]), components=4))
    root = rig.root
    channel(joint_nodes[root], "translation",
            b.accessor(rig.root_translation + rig.joint_rest[root], components=3))
    b.doc["animations"] = [{"name": "mvp4d_sequence", "samplers": samplers, "channels": channels}]
