"""A small binary glTF 2.0 (.glb) writer for the rigged head and its splats (numpy, no bpy).

What goes in (``write_avatar_glb``), all in glTF axes (+y up, metres; equal to FLAME space):

* the head mesh with one morph target per shape key (expressions and pose correctives,
  ``mesh.extras.targetNames`` names them as Blender's importer expects), skinned to the FLAME
  joints (4 strongest LBS weights per vertex, renormalised);
* one animation: morph weights per frame and joint rotations/root translation per frame (LINEAR);
* the splats as a POINTS primitive with ``KHR_gaussian_splatting`` (linear scale, linear opacity,
  xyzw rotation, SH degree 0 [+ higher]) and the binding as ``_``-prefixed attributes, which
  standard viewers ignore and an engine runtime uses to drive the splats from the skinned head:
  ``_BINDING_FACE_XYZ`` (parent face index as float, then the triangle-local position),
  ``_BINDING_ROTATION`` (triangle-local xyzw) and ``_BINDING_LOG_SCALE`` (triangle-relative log
  scale, 0). All three are float VEC4 on purpose: Blender 4.5's glTF importer pairs custom
  attributes with their data through a ``set`` and crashes when they differ in size.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FLOAT, UBYTE, USHORT, UINT = 5126, 5121, 5123, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
_TYPES = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4", 16: "MAT4"}
SPLAT_EXT = "KHR_gaussian_splatting"


@dataclass
class GltfBuilder:
    """Accumulates buffer views and accessors in one binary buffer."""

    doc: dict = field(default_factory=lambda: {
        "asset": {"version": "2.0", "generator": "MVP4D for Blender"},
        "buffers": [], "bufferViews": [], "accessors": [],
    })
    blob: bytearray = field(default_factory=bytearray)

    def accessor(self, data: np.ndarray, *, components: int, ctype: int = FLOAT, target: int | None = None,
                 minmax: bool = False, normalized: bool = False) -> int:
        dtype = {FLOAT: "<f4", UBYTE: "u1", USHORT: "<u2", UINT: "<u4"}[ctype]
        arr = np.ascontiguousarray(np.asarray(data).reshape(-1, components).astype(dtype))
        while len(self.blob) % 4:
            self.blob.append(0)
        view = {"buffer": 0, "byteOffset": len(self.blob), "byteLength": arr.nbytes}
        if target is not None:
            view["target"] = target
        self.blob.extend(arr.tobytes())
        self.doc["bufferViews"].append(view)
        acc = {"bufferView": len(self.doc["bufferViews"]) - 1, "componentType": ctype, "count": int(arr.shape[0]),
               "type": _TYPES[components]}
        if normalized:
            acc["normalized"] = True
        if minmax:
            acc["min"] = [float(x) for x in arr.min(axis=0)] if len(arr) else [0.0] * components
            acc["max"] = [float(x) for x in arr.max(axis=0)] if len(arr) else [0.0] * components
        self.doc["accessors"].append(acc)
        return len(self.doc["accessors"]) - 1

    def to_glb(self) -> bytes:
        while len(self.blob) % 4:
            self.blob.append(0)
        self.doc["buffers"] = [{"byteLength": len(self.blob)}]
        js = json.dumps(self.doc, separators=(",", ":")).encode("utf-8")
        js += b" " * (-len(js) % 4)
        total = 12 + 8 + len(js) + 8 + len(self.blob)
        return b"".join([
            struct.pack("<4sII", b"glTF", 2, total),
            struct.pack("<I4s", len(js), b"JSON"), js,
            struct.pack("<I4s", len(self.blob), b"BIN\x00"), bytes(self.blob),
        ])


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


@dataclass
class SplatExport:
    position: np.ndarray  # (N, 3)
    rotation: np.ndarray  # (N, 4) wxyz
    scale: np.ndarray  # (N, 3) linear
    opacity: np.ndarray  # (N,) linear
    sh: np.ndarray  # (N, K, 3)
    parent_face: np.ndarray  # (N,)
    local_position: np.ndarray
    local_rotation: np.ndarray  # wxyz
    local_log_scale: np.ndarray


def _top4(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    J = weights.shape[1]
    if J < 4:
        weights = np.concatenate([weights, np.zeros((weights.shape[0], 4 - J))], axis=1)
    idx = np.argsort(-weights, axis=1)[:, :4]
    w = np.take_along_axis(weights, idx, axis=1).clip(min=0.0)
    w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    idx = np.where(w > 0, idx, 0)  # unused slots point at joint 0 with weight 0
    return idx.astype(np.uint16), w.astype(np.float32)


def _xyzw(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-20)
    return np.concatenate([q[..., 1:], q[..., :1]], axis=-1)


def _add_rig(b: GltfBuilder, rig: RigExport) -> tuple[list[dict], int, list[int]]:
    """Nodes for the mesh and joints; returns (nodes, mesh node index, scene roots)."""
    V = rig.rest_vertices.shape[0]
    J = len(rig.joint_names)
    joints_idx, joints_w = _top4(rig.lbs_weights)
    prim = {
        "attributes": {
            "POSITION": b.accessor(rig.rest_vertices, components=3, target=ARRAY_BUFFER, minmax=True),
            "JOINTS_0": b.accessor(joints_idx, components=4, ctype=USHORT, target=ARRAY_BUFFER),
            "WEIGHTS_0": b.accessor(joints_w, components=4, target=ARRAY_BUFFER),
        },
        "indices": b.accessor(rig.faces.astype(np.uint32), components=1, ctype=UINT, target=ELEMENT_ARRAY_BUFFER),
        "mode": 4,
    }
    if len(rig.target_names):
        prim["targets"] = [{"POSITION": b.accessor(d.reshape(V, 3), components=3, target=ARRAY_BUFFER, minmax=True)}
                           for d in rig.target_deltas]
    mesh = {"name": "head", "primitives": [prim], "extras": {"targetNames": list(rig.target_names)}}
    if len(rig.target_names):
        mesh["weights"] = [0.0] * len(rig.target_names)
    b.doc.setdefault("meshes", []).append(mesh)
    nodes: list[dict] = []
    base = 0  # joint j is node j
    for j in range(J):
        p = int(rig.parents[j])
        t = rig.joint_rest[j] - (rig.joint_rest[p] if p >= 0 else 0.0)
        nodes.append({"name": rig.joint_names[j], "translation": [float(x) for x in t]})
    for j in range(J):
        kids = [base + k for k in range(J) if int(rig.parents[k]) == j]
        if kids:
            nodes[j]["children"] = kids
    ibm = np.tile(np.eye(4), (J, 1, 1))
    ibm[:, :3, 3] = -rig.joint_rest
    ibm_acc = b.accessor(np.transpose(ibm, (0, 2, 1)).reshape(J, 16), components=16)  # column-major
    roots = [j for j in range(J) if int(rig.parents[j]) < 0]
    b.doc["skins"] = [{"name": "flame", "joints": list(range(J)), "inverseBindMatrices": ibm_acc,
                       "skeleton": roots[0]}]
    mesh_node = len(nodes)
    nodes.append({"name": "head", "mesh": len(b.doc["meshes"]) - 1, "skin": 0})
    return nodes, mesh_node, roots + [mesh_node]


def _add_animation(b: GltfBuilder, rig: RigExport, mesh_node: int) -> None:
    T = len(rig.times)
    if T < 2:
        return
    t_acc = b.accessor(rig.times, components=1, minmax=True)
    samplers, channels = [], []

    def channel(node: int, path: str, values: np.ndarray, comps: int) -> None:
        samplers.append({"input": t_acc, "output": b.accessor(values, components=comps), "interpolation": "LINEAR"})
        channels.append({"sampler": len(samplers) - 1, "target": {"node": node, "path": path}})

    if rig.morph_weights.shape[1]:
        channel(mesh_node, "weights", rig.morph_weights.reshape(-1), 1)
    for j in range(len(rig.joint_names)):
        channel(j, "rotation", _xyzw(rig.joint_rotations[:, j]), 4)
    root = next(j for j in range(len(rig.joint_names)) if int(rig.parents[j]) < 0)
    channel(root, "translation", rig.root_translation + rig.joint_rest[root], 3)
    b.doc["animations"] = [{"name": "mvp4d_sequence", "samplers": samplers, "channels": channels}]


def _add_splats(b: GltfBuilder, s: SplatExport, color_space: str) -> dict:
    n = s.position.shape[0]
    attrs = {
        "POSITION": b.accessor(s.position, components=3, target=ARRAY_BUFFER, minmax=True),
        f"{SPLAT_EXT}:ROTATION": b.accessor(_xyzw(s.rotation), components=4, target=ARRAY_BUFFER),
        f"{SPLAT_EXT}:SCALE": b.accessor(s.scale, components=3, target=ARRAY_BUFFER),
        f"{SPLAT_EXT}:OPACITY": b.accessor(s.opacity.reshape(n, 1), components=1, target=ARRAY_BUFFER),
    }
    K = s.sh.shape[1]
    degree = int(round(np.sqrt(K))) - 1
    k = 0
    for deg in range(degree + 1):
        for c in range(2 * deg + 1):
            attrs[f"{SPLAT_EXT}:SH_DEGREE_{deg}_COEF_{c}"] = b.accessor(s.sh[:, k, :], components=3,
                                                                      target=ARRAY_BUFFER)
            k += 1
    face_xyz = np.concatenate([s.parent_face.astype(np.float64).reshape(n, 1), s.local_position], axis=1)
    attrs["_BINDING_FACE_XYZ"] = b.accessor(face_xyz, components=4, target=ARRAY_BUFFER)
    attrs["_BINDING_ROTATION"] = b.accessor(_xyzw(s.local_rotation), components=4, target=ARRAY_BUFFER)
    log_s = np.concatenate([s.local_log_scale, np.zeros((n, 1))], axis=1)
    attrs["_BINDING_LOG_SCALE"] = b.accessor(log_s, components=4, target=ARRAY_BUFFER)
    prim = {"attributes": attrs, "mode": 0, "extensions": {SPLAT_EXT: {
        "kernel": "ellipse", "colorSpace": color_space, "projection": "perspective",
        "sortingMethod": "cameraDistance"}}}
    b.doc.setdefault("meshes", []).append({"name": "splats", "primitives": [prim]})
    return {"name": "splats", "mesh": len(b.doc["meshes"]) - 1, "extras": {
        "mvp4d_binding": "world = s R xyz + c per parent face of the 'head' mesh (GaussianAvatars frame); "
                         "_BINDING_FACE_XYZ = (face, x, y, z), _BINDING_ROTATION = local xyzw, "
                         "_BINDING_LOG_SCALE = (log sx, log sy, log sz, 0) relative to the face size"}}


def write_avatar_glb(path: str | Path, rig: RigExport | None, splats: SplatExport | None,
                     color_space: str = "srgb_rec709_display") -> Path:
    """Write the .glb (atomically). Either part may be None (mesh only / splats only)."""
    b = GltfBuilder()
    nodes: list[dict] = []
    roots: list[int] = []
    if rig is not None:
        nodes, mesh_node, roots = _add_rig(b, rig)
        _add_animation(b, rig, mesh_node)
    if splats is not None:
        nodes.append(_add_splats(b, splats, color_space))
        roots.append(len(nodes) - 1)
        b.doc["extensionsUsed"] = [SPLAT_EXT]
    b.doc["nodes"] = nodes
    b.doc["scenes"] = [{"name": "mvp4d", "nodes": roots}]
    b.doc["scene"] = 0
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".part")
    tmp.write_bytes(b.to_glb())
    tmp.replace(p)
    return p
