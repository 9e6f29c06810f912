"""Exports of an avatar bundle: 3DGS PLY of a frame, a PLY per frame, CAP4D's animated PLY.

* ``ply``: the standard (INRIA) 3DGS PLY of one frame, written by ``gsplat.exporter.export_splats``
  (world positions, log scales, logit opacities, unit wxyz rotations, ``f_dc_*`` and channel-major
  ``f_rest_*``): what every splat viewer and engine importer reads.
* ``ply-sequence``: the same for every frame, ``NNNN.ply`` in a folder (baked animation; the only
  animated form generic viewers and engine plug-ins accept).
* ``cap4d-animated``: CAP4D / brush_avatar's rigged layout (described in ``docs/architecture.md``,
  "CAP4D animated PLY"): elements ``faces`` (uint32 ``index_0..2``),
  ``base_vertex`` (frame 0), ``vertex`` (triangle-local splats + float ``binding``), then per frame i
  (``%05d``) ``meta_delta_min_i``, ``meta_delta_max_i`` and ``delta_vertex_i`` = (v_i - v_0 - min) /
  (max - min), uint8 when ``compress`` else float32. The viewer re-derives every splat from the
  mesh with the same triangle frame, so this file is small and still fully animated.
* ``glb`` and ``spz``: for game engines and web viewers, :mod:`backend.engines.exports` (rigged glTF
  with skinned, morphing splats; Niantic's SPZ). ``--ply-axes y-down`` writes the PLYs in 3DGS/COLMAP axes.

World Gaussians are posed with the numpy binding (:mod:`.binding_np`), the mirror of the torch one
the fit used, in FLAME space (metres, +y up). Per-frame ``detail_offsets`` are baked into the PLY
exports; the animated layout has no place for them (a warning says so). Every file is written
atomically: an interrupted or failed export leaves nothing under the final name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EXIT_ERROR, MVP4DError
from ..fsutil import atomic_path, check_new_file, publish_dir
from .bundle import AvatarBundle, read_bundle
from .world_gaussians import check_frame as _frame
from .world_gaussians import world_gaussians_np

__all__ = ["FORMATS", "world_gaussians_np", "ply_bytes", "export_ply", "export_ply_sequence",
           "export_cap4d_animated", "export_bundle", "main"]

FORMATS = ("ply", "ply-sequence", "cap4d-animated", "glb", "spz")


def ply_bytes(bundle: AvatarBundle, frame: int = 0, axes: str = "y-up") -> bytes:
    """The standard 3DGS PLY of one frame, through gsplat's exporter (``axes``: :data:`~backend.engines.exports.PLY_AXES`)."""
    import torch
    from gsplat.exporter import export_splats

    from ..engines.exports import to_ply_axes

    w = {k: torch.from_numpy(v) for k, v in to_ply_axes(world_gaussians_np(bundle, frame), axes).items()}
    return export_splats(means=w["means"], scales=w["log_scales"], quats=w["quats"], opacities=w["opacity_logit"],
                         sh0=w["sh"][:, :1], shN=w["sh"][:, 1:], format="ply")


def export_ply(bundle: AvatarBundle, out_path: str | Path, frame: int = 0, axes: str = "y-up") -> Path:
    """Write the 3DGS PLY of ``frame`` to ``out_path`` (atomic)."""
    data = ply_bytes(bundle, frame, axes)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(data)
    return out_path


def export_ply_sequence(bundle: AvatarBundle, out_dir: str | Path,
                        progress: Callable[[int, int], None] | None = None, overwrite: bool = False,
                        axes: str = "y-up") -> list[Path]:
    """One 3DGS PLY per frame, ``out_dir/NNNN.ply``, built in a temporary sibling and swapped in by
    :func:`~backend.fsutil.publish_dir`: a new folder appears complete or not at all; an earlier
    export's folder has only its own files replaced; anyone else's non-empty folder is refused
    (``OUTPUT_EXISTS``) unless ``overwrite``, and even then nothing but same-named files is replaced."""
    out_dir = Path(out_dir)
    T = bundle.num_frames
    names = [f"{t:04d}.ply" for t in range(T)]
    with publish_dir(out_dir, overwrite=overwrite) as tmp:
        for t, name in enumerate(names):
            (tmp / name).write_bytes(ply_bytes(bundle, t, axes))
            if progress:
                progress(t + 1, T)
    return [out_dir / n for n in names]


def _struct(columns: dict[str, np.ndarray], dtype: str) -> np.ndarray:
    n = len(next(iter(columns.values())))
    out = np.empty(n, dtype=[(k, dtype) for k in columns])
    for k, v in columns.items():
        out[k] = v
    return out


def quantize_deltas(delta: np.ndarray, compress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(V, 3) vertex deltas -> (min (3,), max (3,), normalised deltas uint8 or float32 in [0, 1]).

    Decoding is min + q (max - min) with q = byte / 255, so the rounding error is at most
    (max - min) / 255 / 2 per axis. An axis that does not move has max = min and q = 0.
    """
    lo, hi = delta.min(0), delta.max(0)
    span = hi - lo
    q = np.where(span > 0, (delta - lo) / np.where(span > 0, span, 1.0), 0.0)
    if compress:
        q = np.clip(np.rint(q * 255.0), 0, 255).astype(np.uint8)
    else:
        q = q.astype(np.float32)
    return lo.astype(np.float32), hi.astype(np.float32), q


def cap4d_animated_ply(bundle: AvatarBundle, compress: bool = True):
    """The animated layout as a ``plyfile.PlyData`` (see the module docstring)."""
    from plyfile import PlyData, PlyElement

    verts = bundle.vertices.astype(np.float32)  # (T, V, 3)
    N, K = bundle.num_gaussians, bundle.sh.shape[1]
    cols: dict[str, np.ndarray] = {a: bundle.local_position[:, i] for i, a in enumerate("xyz")}
    for c in range(3):
        cols[f"f_dc_{c}"] = bundle.sh[:, 0, c]
    rest = bundle.sh[:, 1:, :].transpose(0, 2, 1).reshape(N, -1)  # channel-major: R 1..K-1, G ..., B ...
    for j in range(rest.shape[1]):
        cols[f"f_rest_{j}"] = rest[:, j]
    cols["opacity"] = bundle.opacity_logit
    for i in range(3):
        cols[f"scale_{i}"] = bundle.log_scale[:, i]
    for i in range(4):
        cols[f"rot_{i}"] = bundle.local_rotation[:, i]
    cols["binding"] = bundle.parent_face.astype(np.float32)  # exact below 2^24 faces
    assert len(cols) == 3 + 3 + 3 * (K - 1) + 1 + 3 + 4 + 1
    elements = [
        PlyElement.describe(_struct({f"index_{i}": bundle.faces[:, i] for i in range(3)}, "u4"), "faces"),
        PlyElement.describe(_struct({a: verts[0][:, i] for i, a in enumerate("xyz")}, "f4"), "base_vertex"),
        PlyElement.describe(_struct(cols, "f4"), "vertex"),
    ]
    for t in range(bundle.num_frames):
        lo, hi, q = quantize_deltas(verts[t] - verts[0], compress)
        elements += [
            PlyElement.describe(_struct({a: lo[i:i + 1] for i, a in enumerate("xyz")}, "f4"), f"meta_delta_min_{t:05d}"),
            PlyElement.describe(_struct({a: hi[i:i + 1] for i, a in enumerate("xyz")}, "f4"), f"meta_delta_max_{t:05d}"),
            PlyElement.describe(_struct({a: q[:, i] for i, a in enumerate("xyz")}, "u1" if compress else "f4"),
                                f"delta_vertex_{t:05d}"),
        ]
    return PlyData(elements, text=False, byte_order="<", comments=["MVP4D avatar, FLAME space: metres, +y up"])


def export_cap4d_animated(bundle: AvatarBundle, out_path: str | Path, compress: bool = True,
                          warn: Callable[[str], None] | None = None) -> Path:
    """Write the CAP4D animated PLY (atomic)."""
    if bundle.detail_offsets is not None and np.any(bundle.detail_offsets) and warn:
        warn("the animated PLY cannot hold per-frame fine-detail offsets; they are left out "
             "(the PLY and PLY-sequence exports include them)")
    ply = cap4d_animated_ply(bundle, compress)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp, open(tmp, "wb") as f:
        ply.write(f)
    return out_path


def export_bundle(bundle_path: str | Path, fmt: str, out_path: str | Path, frame: int = 0, compress: bool = True,
                  warn: Callable[[str], None] | None = None,
                  progress: Callable[[int, int], None] | None = None, overwrite: bool = False,
                  flame: str | None = None, proxy: str = "hidden", splats: str = "skinned",
                  ply_axes: str = "y-up") -> list[Path]:
    """Read ``bundle_path`` and export it as ``fmt`` (:data:`FORMATS`) to ``out_path`` (a file, or a
    folder for ``ply-sequence``); returns the written paths. An existing file is replaced only with
    ``overwrite`` (``OUTPUT_EXISTS`` otherwise, checked before any work); folders: :func:`export_ply_sequence`."""
    if fmt not in FORMATS:
        raise MVP4DError("BAD_INPUT", f"unknown export format {fmt!r}", f"Use one of: {', '.join(FORMATS)}.")
    if fmt != "ply-sequence":
        check_new_file(out_path, overwrite)
    bundle = read_bundle(bundle_path)
    try:
        if fmt == "ply":
            return [export_ply(bundle, out_path, _frame(bundle, frame), ply_axes)]
        if fmt == "ply-sequence":
            return export_ply_sequence(bundle, out_path, progress, overwrite=overwrite, axes=ply_axes)
        if fmt in ("glb", "spz"):  # game engines and web viewers: backend/engines (numpy only)
            from ..engines.exports import export_glb, export_spz
            from ..engines.gltf import GlbOptions

            if fmt == "spz":
                return [export_spz(bundle, out_path, _frame(bundle, frame))]
            return [export_glb(bundle, out_path, _frame(bundle, frame), flame, GlbOptions(proxy=proxy, splats=splats))]
        return [export_cap4d_animated(bundle, out_path, compress, warn)]
    except OSError as e:
        raise MVP4DError("BAD_INPUT", f"could not write {out_path}: {e.strerror or e}",
                         "Check the output folder exists, is writable and the disk has space.") from e


def main(argv: list[str] | None = None) -> int:
    """``python -m backend export BUNDLE --format F --out PATH [--frame N] [--no-compress]``."""
    from ..events import EventSink

    p = argparse.ArgumentParser(prog="python -m backend export", description="export an avatar bundle")
    p.add_argument("bundle", help="avatar.safetensors")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output file (a folder for ply-sequence)")
    p.add_argument("--frame", type=int, default=0, help="frame for ply/spz; the baked frame for glb")
    p.add_argument("--no-compress", action="store_true", help="float32 vertex deltas in cap4d-animated")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output file / add to a non-empty folder (other files are kept)")
    p.add_argument("--flame", default=None, help="glb: the avatar's head model (.pkl/.npz; default toy for toy avatars)")
    p.add_argument("--proxy", default="hidden", choices=("none", "hidden", "visible"), help="glb: the head mesh")
    p.add_argument("--splats", default="skinned", choices=("skinned", "rigid", "static"),
                   help="glb: splats skinned with morph targets, rigid groups under joints, or the static frame")
    p.add_argument("--ply-axes", default="y-up", choices=("y-up", "y-down"),
                   help="ply/ply-sequence: y-up (glTF/FLAME axes) or y-down (3DGS/COLMAP axes, Babylon.js)")
    args = p.parse_args(argv)
    sink = EventSink(None, stream=sys.stdout)  # resolved now, so redirected stdout is honoured
    try:
        sink.stage("export", "start")
        paths = export_bundle(args.bundle, args.format, args.out, frame=args.frame, compress=not args.no_compress,
                              warn=lambda m: sink.warning(m, stage="export"),
                              progress=lambda d, t: sink.progress("export", d, t), overwrite=args.overwrite,
                              flame=args.flame, proxy=args.proxy, splats=args.splats, ply_axes=args.ply_axes)
        sink.stage("export", "end")
        out = Path(args.out)
        sink.done({args.format: str(out if args.format == "ply-sequence" else paths[0])})
        return 0
    except MVP4DError as e:
        sink.error(e, stage="export")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
