"""INRIA 3DGS PLY writing and reading (binary little-endian, numpy structured arrays, no bpy).

Layout (docs/architecture.md, "3DGS PLY"): ``x y z nx ny nz f_dc_0..2 f_rest_* opacity
scale_0..2 rot_0..3``, float32; ``f_rest`` channel-major; opacity as a logit, scale as log std-dev,
rotation wxyz. Positions are written in FLAME/glTF axes (+y up), the avatar's native space; a header
comment says so for viewers that read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Splats:
    """World-space Gaussians ready for export (any axes; the caller converts)."""

    position: np.ndarray  # (N, 3)
    rotation: np.ndarray  # (N, 4) wxyz
    log_scale: np.ndarray  # (N, 3)
    opacity_logit: np.ndarray  # (N,)
    sh: np.ndarray  # (N, K, 3)

    def __len__(self) -> int:
        return int(self.position.shape[0])


def _fields(num_rest: int, extra: tuple[str, ...] = ()) -> list[str]:
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(num_rest)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names + list(extra)


def write_splat_ply(path: str | Path, s: Splats, comment: str = "vertical axis: y") -> Path:
    """Write ``s`` as a 3DGS PLY (atomically: a temporary file is renamed into place)."""
    n, K = len(s), s.sh.shape[1]
    rest = np.transpose(s.sh[:, 1:, :], (0, 2, 1)).reshape(n, 3 * (K - 1))  # channel-major
    names = _fields(rest.shape[1])
    data = np.empty(n, dtype=[(nm, "<f4") for nm in names])
    cols = np.concatenate([
        s.position, np.zeros((n, 3)), s.sh[:, 0, :], rest, s.opacity_logit.reshape(n, 1), s.log_scale, s.rotation,
    ], axis=1).astype(np.float32)
    flat = data.view("<f4").reshape(n, len(names))
    flat[:] = cols
    header = ["ply", "format binary_little_endian 1.0", f"comment {comment}", "comment written by MVP4D for Blender",
              f"element vertex {n}", *[f"property float {nm}" for nm in names], "end_header"]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".part")
    with open(tmp, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(data.tobytes())
    tmp.replace(p)
    return p


def read_splat_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Read a binary little-endian float PLY's vertex element into ``{property: (N,) array}``."""
    raw = Path(path).read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode("ascii").splitlines()
    if lines[0] != "ply" or "binary_little_endian" not in lines[1]:
        raise ValueError("not a binary little-endian PLY")
    n, names = 0, []
    for ln in lines:
        parts = ln.split()
        if parts[:2] == ["element", "vertex"]:
            n = int(parts[2])
        elif parts[:1] == ["property"]:
            if parts[1] != "float":
                raise ValueError(f"unsupported property type {parts[1]}")
            names.append(parts[2])
    arr = np.frombuffer(raw[end:end + 4 * n * len(names)], dtype="<f4").reshape(n, len(names))
    return {nm: arr[:, i].copy() for i, nm in enumerate(names)}
