"""The binary glTF 2.0 container: one buffer, typed accessors, and the atomic .glb write.

Shared by the head (:mod:`.gltf_rig`) and the splats (:mod:`.gltf_splats`); nothing here knows
about avatars. Quaternions enter the package as wxyz (the backend's order) and leave as glTF's xyzw.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..fsutil import atomic_path

FLOAT, UBYTE, USHORT, UINT = 5126, 5121, 5123, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
_TYPES = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4", 16: "MAT4"}
_DTYPES = {FLOAT: "<f4", UBYTE: "u1", USHORT: "<u2", UINT: "<u4"}


@dataclass
class GltfBuilder:
    """Accumulates buffer views and accessors in one binary buffer, and the JSON document."""

    doc: dict = field(default_factory=lambda: {
        "asset": {"version": "2.0", "generator": "MVP4D for Blender"},
        "buffers": [], "bufferViews": [], "accessors": [],
    })
    blob: bytearray = field(default_factory=bytearray)

    def accessor(self, data: np.ndarray, *, components: int, ctype: int = FLOAT, target: int | None = None,
                 minmax: bool = False, normalized: bool = False) -> int:
        """Append ``data`` as a tightly packed accessor (4-byte aligned); returns its index."""
        arr = np.ascontiguousarray(np.asarray(data).reshape(-1, components).astype(_DTYPES[ctype]))
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

    def add(self, kind: str, item: dict) -> int:
        """Append ``item`` to the top-level array ``kind`` (meshes, nodes, materials...); its index."""
        self.doc.setdefault(kind, []).append(item)
        return len(self.doc[kind]) - 1

    def use_extension(self, name: str) -> None:
        used = self.doc.setdefault("extensionsUsed", [])
        if name not in used:
            used.append(name)

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

    def write(self, path: str | Path) -> Path:
        """Write the .glb atomically (nothing under the final name if it fails)."""
        p = Path(path)
        with atomic_path(p) as tmp:
            tmp.write_bytes(self.to_glb())
        return p


def read_glb(path: str | Path) -> tuple[dict, bytes]:
    """(JSON document, binary chunk) of a .glb: for tests and tools that inspect an export."""
    data = Path(path).read_bytes()
    magic, _version, _total = struct.unpack_from("<4sII", data, 0)
    if magic != b"glTF":
        raise ValueError(f"{path} is not a binary glTF file")
    jlen, _ = struct.unpack_from("<I4s", data, 12)
    doc = json.loads(data[20:20 + jlen])
    off = 20 + jlen
    blen, _ = struct.unpack_from("<I4s", data, off)
    return doc, data[off + 8:off + 8 + blen]


def read_accessor(doc: dict, blob: bytes, index: int) -> np.ndarray:
    """Accessor ``index`` as a (count, components) float64 array (dense, tightly packed views only)."""
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    comps = {v: k for k, v in _TYPES.items()}[acc["type"]]
    dtype = np.dtype(_DTYPES[acc["componentType"]])
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    arr = np.frombuffer(blob, dtype=dtype, count=acc["count"] * comps, offset=start).reshape(acc["count"], comps)
    out = arr.astype(np.float64)
    if acc.get("normalized"):
        out /= float(np.iinfo(dtype).max)
    return out


def top4(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 4 strongest joint weights per row, renormalised: (joint indices uint16, weights float32)."""
    J = weights.shape[1]
    if J < 4:
        weights = np.concatenate([weights, np.zeros((weights.shape[0], 4 - J))], axis=1)
    idx = np.argsort(-weights, axis=1, kind="stable")[:, :4]
    w = np.take_along_axis(weights, idx, axis=1).clip(min=0.0)
    w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    idx = np.where(w > 0, idx, 0)  # unused slots point at joint 0 with weight 0
    return idx.astype(np.uint16), w.astype(np.float32)


def xyzw(q: np.ndarray) -> np.ndarray:
    """Unit wxyz quaternions -> glTF's xyzw order."""
    q = np.asarray(q, np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-20)
    return np.concatenate([q[..., 1:], q[..., :1]], axis=-1)
