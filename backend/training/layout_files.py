"""The file-level checks of the training data format (:mod:`.layout`): problems and the error that lists
them, cameras, frame folders, videos and image headers of one sequence."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..cameras import Camera
from ..errors import MVP4DError


VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_FRAME_RE = re.compile(r"^(\d{4,})\.(png|jpg|jpeg)$", re.IGNORECASE)
_CAMERA_KEYS = ("width", "height", "fx", "fy", "cx", "cy", "world_to_cam")
_MAX_LISTED = 12  # problems spelled out in the error message (all are in DatasetError.problems)


def frame_name(index: int, suffix: str = ".png") -> str:
    return f"{int(index):04d}{suffix}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: which sequence, which field (file / key / view), what."""

    sequence: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.sequence}: {self.field}: {self.message}"


class DatasetError(MVP4DError):
    """``BAD_INPUT`` listing dataset problems (all of them in ``problems``)."""

    def __init__(self, where: str, problems: Sequence[Problem], hint: str | None = None):
        self.problems = list(problems)
        n = len(self.problems)
        listed = "; ".join(str(p) for p in self.problems[:_MAX_LISTED])
        more = f"; … and {n - _MAX_LISTED} more" if n > _MAX_LISTED else ""
        super().__init__("BAD_INPUT", f"training data {where}: {n} problem{'s' * (n != 1)}: {listed}{more}",
                         hint or "Fix the named files (layout: backend/training/layout.py docstring) and run again; "
                                 "`python -m backend.training.data validate DIR` lists every problem.")


def _read_json(path: Path, seq: str, problems: list[Problem]) -> Any:
    if not path.is_file():
        problems.append(Problem(seq, path.name, "file is missing"))
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(Problem(seq, path.name, f"not valid JSON ({exc})"))
        return None


def _finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def _parse_camera(seq: str, view: str, d: Any, problems: list[Problem]) -> Camera | None:
    where = f"cameras.json: {view}"
    if not isinstance(d, dict):
        problems.append(Problem(seq, where, "must be an object with " + ", ".join(_CAMERA_KEYS)))
        return None
    ok = True
    for k in _CAMERA_KEYS:
        if k not in d:
            problems.append(Problem(seq, f"{where}.{k}", "missing"))
            ok = False
    if not ok:
        return None
    for k in ("fx", "fy", "cx", "cy"):
        v = d[k]
        if not _finite_number(v):
            problems.append(Problem(seq, f"{where}.{k}", f"is {v!r}, not a finite number (NaN/inf camera)"))
            ok = False
    for k in ("width", "height"):
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            problems.append(Problem(seq, f"{where}.{k}", f"is {v!r}, not a positive integer"))
            ok = False
    m = d["world_to_cam"]
    if not (isinstance(m, list) and len(m) == 4 and all(isinstance(r, list) and len(r) == 4 for r in m)):
        problems.append(Problem(seq, f"{where}.world_to_cam", "must be a 4 × 4 nested list"))
        return None
    for i, row in enumerate(m):
        for j, v in enumerate(row):
            if not _finite_number(v):
                problems.append(Problem(seq, f"{where}.world_to_cam[{i}][{j}]",
                                        f"is {v!r}, not a finite number (NaN/inf camera)"))
                ok = False
    if not ok:
        return None
    K = np.array([[d["fx"], 0.0, d["cx"]], [0.0, d["fy"], d["cy"]], [0.0, 0.0, 1.0]], dtype=np.float64)
    w2c = np.asarray(m, dtype=np.float64)
    R = w2c[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
        problems.append(Problem(seq, f"{where}.world_to_cam", "rotation part is not a rotation matrix"))
        return None
    try:
        return Camera(K=K, world_to_cam=w2c, width=d["width"], height=d["height"], name=view)
    except MVP4DError as exc:
        problems.append(Problem(seq, where, exc.message))
        return None


def _list_frames(folder: Path) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        m = _FRAME_RE.match(p.name)
        if m and p.is_file():
            out[int(m.group(1))] = p
    return out


def _ranges(xs: Sequence[int]) -> str:
    xs = sorted(xs)
    parts, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(frame_name(xs[i], "") if i == j else f"{frame_name(xs[i], '')}-{frame_name(xs[j], '')}")
        i = j + 1
    shown = ", ".join(parts[:6]) + (", …" if len(parts) > 6 else "")
    return shown


def _frame_folders(seq: str, root: Path, kind: str, views: list[str], F: int, problems: list[Problem],
                   allow_videos: bool) -> tuple[dict[str, list[Path]], dict[str, Path]]:
    """Per-view PNG frame lists (or videos) under ``root`` (``images`` / ``mattes``), with problems."""
    frames: dict[str, list[Path]] = {}
    videos: dict[str, Path] = {}
    present_dirs = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")} if root.is_dir() else set()
    present_videos: dict[str, list[Path]] = {}
    if root.is_dir():
        for p in root.iterdir():
            if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
                present_videos.setdefault(p.stem, []).append(p)
    unknown = sorted((present_dirs | set(present_videos)) - set(views))
    if unknown:
        problems.append(Problem(seq, f"{kind}/", f"has data for {len(unknown)} view(s) not in sequence.json views "
                                f"({', '.join(unknown[:5])}): inconsistent view count ({len(views)} views listed)"))
    missing_views = []
    for v in views:
        if v in present_dirs:
            found = _list_frames(root / v)
            miss = [i for i in range(F) if i not in found]
            extra = sorted(i for i in found if i >= F)
            if miss:
                problems.append(Problem(seq, f"{kind}/{v}", f"frame{'s' * (len(miss) > 1)} {_ranges(miss)} missing "
                                        f"({len(miss)} of {F})"))
            if extra:
                problems.append(Problem(seq, f"{kind}/{v}", f"frames {_ranges(extra)} beyond num_frames = {F}: "
                                        "inconsistent frame count"))
            if not miss:
                frames[v] = [found[i] for i in range(F)]
        elif allow_videos and v in present_videos:
            if len(present_videos[v]) > 1:
                problems.append(Problem(seq, f"{kind}/{v}.*", "more than one video file for this view"))
            else:
                videos[v] = present_videos[v][0]
        else:
            missing_views.append(v)
    if missing_views:
        what = "frame folder or video" if allow_videos else "frame folder"
        problems.append(Problem(seq, f"{kind}/", f"no {what} for view(s) {', '.join(missing_views[:8])}"
                                f"{' …' if len(missing_views) > 8 else ''}: inconsistent view count "
                                f"({len(views)} views listed, {len(views) - len(missing_views)} present)"))
    return frames, videos


def _video_frame_count(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return -1
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def _image_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size  # (W, H)
    except Exception:  # noqa: BLE001 - any decoder error means "unreadable"
        return None
