"""Reading frames of a training sequence (PNG frames or per-view videos, mattes composited on white) and
writing sequences in the format of :mod:`backend.training.layout` (synthetic data, converters, tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..cameras import Camera
from ..errors import MVP4DError
from ..flame import FlameParams
from .layout import FORMAT, FORMAT_VERSION, DatasetError, Problem, SequenceInfo, frame_name

__all__ = ["read_frames", "write_dataset_json", "write_sequence"]


# ---------------------------------------------------------------------------------------------
# frame reading
# ---------------------------------------------------------------------------------------------


def _read_image(path: Path, seq: str, what: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                return np.asarray(im.convert("RGBA"))
            if im.mode in ("L", "I;16", "I") and what.startswith("mattes"):
                return np.asarray(im.convert("L"))
            return np.asarray(im.convert("RGB"))
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(seq, [Problem(seq, what, f"cannot be read ({type(exc).__name__}: {exc})")]) from exc


def _read_video_frames(path: Path, indices: Sequence[int], seq: str, what: str) -> dict[int, np.ndarray]:
    import cv2

    want = sorted(set(int(i) for i in indices))
    out: dict[int, np.ndarray] = {}
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DatasetError(seq, [Problem(seq, what, "video cannot be opened")])
        i = 0
        last = want[-1]
        while i <= last:
            ok = cap.grab()
            if not ok:
                raise DatasetError(seq, [Problem(seq, what, f"video ends after {i} frames, frame {last} needed")])
            if i in want:
                ok, frame = cap.retrieve()
                if not ok:
                    raise DatasetError(seq, [Problem(seq, what, f"frame {i} cannot be decoded")])
                out[i] = frame[..., ::-1].copy() if frame.ndim == 3 else frame  # BGR -> RGB
            i += 1
    finally:
        cap.release()
    return out


def _composite(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    if alpha is None:
        return rgb
    a = alpha.astype(np.float32)[..., None] / 255.0
    return np.clip(np.rint(rgb.astype(np.float32) * a + 255.0 * (1.0 - a)), 0, 255).astype(np.uint8)


def read_frames(info: SequenceInfo, view: str, frames: Sequence[int]) -> np.ndarray:
    """Frames of one view, composited on white with its matte: uint8 (n, H, W, 3). Raises
    :class:`DatasetError` naming the sequence, view and frame on a bad or wrongly sized file."""
    seq = info.name
    cam = info.cameras[info.views.index(view)]
    want = (cam.height, cam.width)
    if info.frame_source == "png":
        raw = {f: _read_image(info.frame_files[view][f], seq, f"images/{view}/{info.frame_files[view][f].name}")
               for f in frames}
    else:
        raw = _read_video_frames(info.video_files[view], frames, seq, f"videos/{info.video_files[view].name}")
    mattes: dict[int, np.ndarray] = {}
    m = info.matte_files.get(view)
    if isinstance(m, list):
        mattes = {f: _read_image(m[f], seq, f"mattes/{view}/{m[f].name}") for f in frames}
    elif isinstance(m, Path):
        mattes = _read_video_frames(m, frames, seq, f"mattes/{m.name}")
    out = []
    for f in frames:
        img = raw[f]
        what = f"images/{view}/{frame_name(f)}" if info.frame_source == "png" else f"videos/{view} frame {f}"
        if img.shape[:2] != want:
            raise DatasetError(seq, [Problem(seq, what, f"is {img.shape[1]}×{img.shape[0]}, camera {view} is "
                                             f"{cam.width}×{cam.height}")])
        alpha = None
        if img.ndim == 3 and img.shape[2] == 4:
            img, alpha = img[..., :3], img[..., 3]
        if f in mattes:
            mt = mattes[f]
            mt = mt[..., 0] if mt.ndim == 3 else mt
            if mt.shape[:2] != want:
                raise DatasetError(seq, [Problem(seq, f"mattes/{view} frame {f}", f"is {mt.shape[1]}×{mt.shape[0]}, "
                                                 f"camera {view} is {cam.width}×{cam.height}")])
            alpha = mt
        out.append(_composite(np.ascontiguousarray(img[..., :3]), alpha))
    return np.stack(out)


# ---------------------------------------------------------------------------------------------
# writing (synthetic data, converters, tests)
# ---------------------------------------------------------------------------------------------


def write_dataset_json(root: str | Path, flame_model: str = "toy", sequences: Sequence[str] | None = None,
                       **extra: Any) -> Path:
    from ..fsutil import write_json_atomic

    root = Path(root)
    d = {"format": FORMAT, "format_version": FORMAT_VERSION, "flame_model": flame_model, **extra}
    if sequences is not None:
        d["sequences"] = list(sequences)
    write_json_atomic(root / "dataset.json", d)
    return root


def write_sequence(folder: str | Path, views: Sequence[str], cameras: Sequence[Camera], params: FlameParams,
                   images: np.ndarray, mattes: np.ndarray | None = None, *, fps: float | None = None,
                   identity: str | None = None, video: bool = False, **extra: Any) -> Path:
    """Write one sequence: ``images`` uint8 (V, F, H, W, 3), ``mattes`` uint8 (V, F, H, W) or None.
    ``video=True`` writes lossless FFV1 ``.avi`` files instead of PNG frames. Atomic (whole folder)."""
    from PIL import Image

    from ..fsutil import atomic_dir

    folder = Path(folder)
    V, F = images.shape[:2]
    if len(views) != V or len(cameras) != V or params.num_frames != F:
        raise MVP4DError("INTERNAL", f"write_sequence: {len(views)} views / {len(cameras)} cameras / "
                         f"{params.num_frames} parameter frames for images {images.shape}")
    with atomic_dir(folder) as tmp:
        meta = {"views": list(views), "num_frames": int(F), "frame_source": "video" if video else "png", **extra}
        if fps is not None:
            meta["fps"] = fps
        if identity is not None:
            meta["identity"] = identity
        (tmp / "sequence.json").write_text(json.dumps(meta, indent=2) + "\n")
        cams = {}
        for v, c in zip(views, cameras):
            cams[v] = {"width": c.width, "height": c.height, "fx": c.fx, "fy": c.fy, "cx": c.cx, "cy": c.cy,
                       "world_to_cam": [[float(x) for x in row] for row in c.world_to_cam]}
        (tmp / "cameras.json").write_text(json.dumps(cams, indent=1) + "\n")
        params.save_npz(tmp / "flame.npz")
        for kind, data in (("images", images), ("mattes", mattes)):
            if data is None:
                continue
            for v, name in enumerate(views):
                if video:
                    _write_video(tmp / ("videos" if kind == "images" else kind) / f"{name}.avi", data[v])
                else:
                    (tmp / kind / name).mkdir(parents=True)
                    for f in range(F):
                        Image.fromarray(data[v, f]).save(tmp / kind / name / frame_name(f), compress_level=1)
    return folder


def _write_video(path: Path, frames: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 25, (w, h), frames.ndim == 4)
    if not wr.isOpened():  # pragma: no cover - codec missing
        raise MVP4DError("INTERNAL", f"cannot write video {path} (FFV1 codec unavailable in OpenCV)")
    for fr in frames:
        wr.write(fr[..., ::-1].copy() if fr.ndim == 3 else fr)
    wr.release()

