"""``avatar.safetensors``: the avatar bundle, the hand-off to Blender and to engines.

The contract is :data:`backend.protocol.BUNDLE_TENSORS` (names, shapes, dtypes, parsed from its
descriptions so there is one source of truth), :data:`~backend.protocol.BUNDLE_OPTIONAL`,
:data:`~backend.protocol.BUNDLE_METADATA_KEYS` and :data:`~backend.protocol.BUNDLE_SCHEMA_VERSION`.
safetensors metadata values must be strings, so every metadata key is stored as its JSON text.

**numpy + safetensors only, no torch**: the Blender add-on reads bundles with this module (a test
checks that importing it does not import torch). Reads never memory-map (the file can be replaced
while Blender holds the arrays); writes are atomic (:mod:`backend.fsutil`).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import MVP4DError, bad_input
from ..fsutil import atomic_path
from ..protocol import BUNDLE_METADATA_KEYS, BUNDLE_OPTIONAL, BUNDLE_SCHEMA_VERSION, BUNDLE_TENSORS, parse_json

_MAX_HEADER_DEPTH = 16  # tensors, metadata and the settings inside it: a few levels in a bundle we write

__all__ = ["AvatarBundle", "TENSOR_SPECS", "read_bundle", "write_bundle"]


def _parse_specs() -> dict[str, tuple[tuple[str, ...], np.dtype]]:
    """``"(T, V, 3) float16 ..."`` -> (("T", "V", "3"), float16), for every bundle tensor."""
    specs = {}
    for name, desc in BUNDLE_TENSORS.items():
        m = re.match(r"\s*\(([^)]*)\)\s+(int32|int64|float16|float32|float64|uint8)\b", desc)
        if not m:
            raise RuntimeError(f"protocol.BUNDLE_TENSORS[{name!r}] has no '(dims) dtype' prefix: {desc!r}")
        dims = tuple(d.strip() for d in m.group(1).split(",") if d.strip())
        specs[name] = (dims, np.dtype(m.group(2)))
    return specs


#: bundle tensor name -> (symbolic shape, dtype), from protocol.BUNDLE_TENSORS
TENSOR_SPECS: dict[str, tuple[tuple[str, ...], np.dtype]] = _parse_specs()
#: bundle tensor name -> AvatarBundle field (the last component: "gaussians.sh" -> "sh")
_FIELD = {name: name.split(".")[-1] for name in TENSOR_SPECS}
assert len(set(_FIELD.values())) == len(_FIELD), "bundle tensor names must end uniquely"


_HINT = "Re-export the avatar bundle with the MVP4D backend."


@dataclass(eq=False)
class AvatarBundle:
    """One avatar: triangle-local Gaussians, the mesh, the animation, metadata (see protocol).

    Arrays are numpy with the contract dtypes (N Gaussians, F faces, V vertices, T frames);
    ``metadata`` maps every key of ``BUNDLE_METADATA_KEYS`` to a JSON value. Build one with
    :meth:`build` (casts dtypes, fills ``schema_version`` and ``num_frames``), check with
    :meth:`validate`.
    """

    parent_face: np.ndarray
    local_position: np.ndarray
    local_rotation: np.ndarray
    log_scale: np.ndarray
    opacity_logit: np.ndarray
    sh: np.ndarray
    faces: np.ndarray
    rest_vertices: np.ndarray
    expr: np.ndarray
    jaw_pose: np.ndarray
    neck_pose: np.ndarray
    eye_pose: np.ndarray
    global_rot: np.ndarray
    transl: np.ndarray
    vertices: np.ndarray
    detail_offsets: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    # --- sizes --------------------------------------------------------------------------------
    @property
    def num_gaussians(self) -> int:
        return int(self.parent_face.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def sh_degree(self) -> int:
        return math.isqrt(int(self.sh.shape[1])) - 1

    @property
    def fps(self) -> float:
        return float(self.metadata["fps"])

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, arrays: Mapping[str, Any], metadata: Mapping[str, Any]) -> "AvatarBundle":
        """From arrays keyed by field name or bundle name (numpy, lists or CPU torch tensors, cast
        to the contract dtypes: e.g. int64 faces -> int32, float32 vertices -> float16) and the
        metadata (``schema_version`` and ``num_frames`` are filled in). Validates."""
        by_field = {(_FIELD.get(k, k)): v for k, v in arrays.items()}
        unknown = sorted(set(by_field) - set(_FIELD.values()))
        if unknown:
            raise bad_input(f"avatar bundle: unknown array {unknown[0]!r}", _HINT)
        kw: dict[str, Any] = {}
        for name, (_, dtype) in TENSOR_SPECS.items():
            v = by_field.get(_FIELD[name])
            if v is not None:
                if hasattr(v, "detach"):  # a torch tensor (no torch import here)
                    v = v.detach().cpu().numpy()
                kw[_FIELD[name]] = np.ascontiguousarray(np.asarray(v).astype(dtype, copy=False))
        meta = dict(metadata)
        meta["schema_version"] = BUNDLE_SCHEMA_VERSION
        if "vertices" in kw:
            meta["num_frames"] = int(kw["vertices"].shape[0])
        missing = [f for f in _FIELD.values() if f not in kw and f != "detail_offsets"]
        if missing:
            raise bad_input(f"avatar bundle: array {missing[0]!r} is missing", _HINT)
        bundle = cls(**kw, metadata=meta)
        bundle.validate()
        return bundle

    def tensors(self) -> dict[str, np.ndarray]:
        """Bundle name -> array (optional tensors only when present)."""
        out = {}
        for name in TENSOR_SPECS:
            v = getattr(self, _FIELD[name])
            if v is not None:
                out[name] = v
        return out

    # --- checks -------------------------------------------------------------------------------
    def validate(self, where: str = "avatar bundle") -> None:
        """Raise ``BAD_INPUT`` naming the first thing that breaks the contract."""
        _check_metadata(self.metadata, where)
        sizes: dict[str, int] = {}
        first: dict[str, str] = {}  # symbol -> the tensor that fixed its size
        for name, (dims, dtype) in TENSOR_SPECS.items():
            a = getattr(self, _FIELD[name])
            if a is None:
                if name in BUNDLE_OPTIONAL:
                    continue
                raise bad_input(f"{where}: tensor {name!r} is missing", _HINT)
            if not isinstance(a, np.ndarray):
                raise bad_input(f"{where}: tensor {name!r} must be a numpy array, got {type(a).__name__}", _HINT)
            if a.dtype != dtype:
                raise bad_input(f"{where}: tensor {name!r} must be {dtype}, got {a.dtype}", _HINT)
            if a.ndim != len(dims):
                raise bad_input(f"{where}: tensor {name!r} must have shape ({', '.join(dims)}), got {a.shape}", _HINT)
            for sym, n in zip(dims, a.shape):
                if sym.isdigit():
                    if n != int(sym):
                        raise bad_input(f"{where}: tensor {name!r} must have shape ({', '.join(dims)}), got {a.shape}",
                                        _HINT)
                elif sizes.setdefault(sym, n) != n:
                    raise bad_input(f"{where}: tensor {name!r} has {sym} = {n} but {first[sym]!r} has {sym} = {sizes[sym]}", _HINT)
                else:
                    first.setdefault(sym, name)
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                raise bad_input(f"{where}: tensor {name!r} contains NaN or infinite values", _HINT)
        N, F, V, T, K = (sizes[s] for s in ("N", "F", "V", "T", "K"))
        if min(N, F, V, T) < 1:
            raise bad_input(f"{where}: needs at least one Gaussian, face, vertex and frame (N={N}, F={F}, V={V}, T={T})", _HINT)
        if math.isqrt(K) ** 2 != K or K > 25:
            raise bad_input(f"{where}: tensor 'gaussians.sh' has K = {K} coefficients; K must be (degree + 1)^2, degree <= 4", _HINT)
        if self.parent_face.min() < 0 or self.parent_face.max() >= F:
            raise bad_input(f"{where}: tensor 'gaussians.parent_face' must index the {F} faces, "
                       f"found {int(self.parent_face.min())}..{int(self.parent_face.max())}", _HINT)
        if self.faces.min() < 0 or self.faces.max() >= V:
            raise bad_input(f"{where}: tensor 'mesh.faces' must index the {V} vertices, "
                       f"found {int(self.faces.min())}..{int(self.faces.max())}", _HINT)
        if self.metadata["num_frames"] != T:
            raise bad_input(f"{where}: metadata num_frames = {self.metadata['num_frames']} but "
                       f"'animation.vertices' has {T} frames", _HINT)


def _check_metadata(meta: Mapping[str, Any], where: str) -> None:
    if not isinstance(meta, Mapping):
        raise bad_input(f"{where}: metadata must be a mapping", _HINT)
    v = meta.get("schema_version")
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise bad_input(f"{where}: metadata schema_version must be a positive integer, got {v!r}", _HINT)
    if v > BUNDLE_SCHEMA_VERSION:
        raise bad_input(f"{where}: schema_version {v} is newer than this version reads ({BUNDLE_SCHEMA_VERSION})",
                        "Update the MVP4D add-on and backend to open this avatar.")
    for key in BUNDLE_METADATA_KEYS:
        if key not in meta:
            raise bad_input(f"{where}: metadata key {key!r} is missing", _HINT)
    unknown = sorted(set(meta) - set(BUNDLE_METADATA_KEYS))
    if unknown:
        raise bad_input(f"{where}: metadata key {unknown[0]!r} is not part of schema {BUNDLE_SCHEMA_VERSION}", _HINT)
    fps = meta["fps"]
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise bad_input(f"{where}: metadata fps must be a positive number, got {fps!r}", _HINT)
    nf = meta["num_frames"]
    if isinstance(nf, bool) or not isinstance(nf, int) or nf < 1:
        raise bad_input(f"{where}: metadata num_frames must be a positive integer, got {nf!r}", _HINT)
    if not isinstance(meta["flame_model_id"], str):
        raise bad_input(f"{where}: metadata flame_model_id must be a string", _HINT)
    for key in BUNDLE_METADATA_KEYS:
        try:
            json.dumps(meta[key], allow_nan=False)
        except (TypeError, ValueError) as e:
            raise bad_input(f"{where}: metadata {key!r} is not JSON-serialisable ({e})", _HINT) from e


# ---------------------------------------------------------------------------------------------
# I/O
# ---------------------------------------------------------------------------------------------


def write_bundle(path: str | os.PathLike, bundle: AvatarBundle) -> Path:
    """Validate and write ``bundle`` to ``path`` atomically; returns the path."""
    from safetensors.numpy import save_file

    bundle.validate()
    meta = {k: json.dumps(bundle.metadata[k], sort_keys=True, allow_nan=False) for k in BUNDLE_METADATA_KEYS}
    tensors = {k: np.ascontiguousarray(v) for k, v in bundle.tensors().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)
    return path


_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"ply": "a PLY file",
          b"glTF": "a glTF binary (.glb)", b"PK\x03\x04": "a zip/npz archive", b"\x93NUMPY": "a numpy .npy array",
          b"\x80": "a Python pickle", b"BLENDER": "a .blend file"}


def _sniff(data: bytes) -> str:
    """What a file that is not a bundle looks like it is, from its first bytes ('' when unknown)."""
    return next((kind for magic, kind in _MAGIC.items() if data.startswith(magic)), "")


def _header_metadata(data: bytes, where: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file: u64 little-endian header size, then JSON."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
    except struct.error as e:
        raise bad_input(_not_a_bundle(where, data), _HINT) from e
    if n > len(data) - 8:
        raise bad_input(_not_a_bundle(where, data), _HINT)
    try:  # bounded nesting: a header of 100 000 brackets is refused, not a RecursionError
        header = parse_json(data[8:8 + n], "its header", max_depth=_MAX_HEADER_DEPTH)
    except MVP4DError as e:
        kind = _sniff(data)  # the decoder's own words mean nothing to an artist: say what the file is
        raise bad_input(f"{where} is not an avatar bundle (it is {kind})" if kind
                   else f"{where} is not a safetensors file ({e.message})", _HINT) from None
    if not isinstance(header, dict):
        raise bad_input(f"{where} is not a safetensors file (its header is not a JSON object)", _HINT)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise bad_input(f"{where} has malformed safetensors metadata", _HINT)
    return meta


def read_bundle(path: str | os.PathLike) -> AvatarBundle:
    """Read and validate a bundle; ``BAD_INPUT`` naming the problem if it breaks the contract."""
    from safetensors.numpy import load

    path = Path(path)
    where = f"avatar bundle {path.name}"
    if not path.is_file():
        raise bad_input(f"no avatar bundle at {path}", "Check the path, or generate the avatar first.")
    data = path.read_bytes()
    raw_meta = _header_metadata(data, where)
    meta: dict[str, Any] = {}
    for key, text in raw_meta.items():
        if not isinstance(text, str):
            raise bad_input(f"{where}: metadata {key!r} is not a string", _HINT)
        try:
            meta[key] = parse_json(text, f"{where}: metadata {key!r}", max_depth=_MAX_HEADER_DEPTH)
        except MVP4DError as e:
            raise bad_input(e.message, _HINT) from None
    _check_metadata(meta, where)  # schema first: a newer bundle may have other tensors
    try:
        arrays = load(data)
    except Exception as e:  # safetensors raises its own SafetensorError
        raise bad_input(f"{where} is not a readable safetensors file ({e})", _HINT) from e
    unknown = sorted(set(arrays) - set(TENSOR_SPECS))
    if unknown:
        raise bad_input(f"{where}: tensor {unknown[0]!r} is not part of schema {BUNDLE_SCHEMA_VERSION}", _HINT)
    kw = {f.name: None for f in fields(AvatarBundle) if f.name != "metadata"}
    for name, a in arrays.items():
        kw[_FIELD[name]] = np.array(a, copy=True)  # own the memory (no view of the file's bytes)
    bundle = AvatarBundle(**kw, metadata=meta)
    bundle.validate(where)
    return bundle


def _not_a_bundle(where: str, data: bytes) -> str:
    kind = _sniff(data)
    return f"{where} is not an avatar bundle" + (f" (it is {kind})" if kind else " (not a safetensors file)")
