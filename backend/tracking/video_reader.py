"""Frames of a performance clip: a video file (through OpenCV's FFmpeg reader) or a folder of images.

Video tracking reads the clip once, front to back, so this module only streams frames: nothing keeps
the whole clip in memory. :func:`open_clip` checks the input before any work starts and turns every
way a clip can be unusable into a typed error with a hint (``BAD_INPUT``): a missing path, a file
that is not a video, a video whose codec this build cannot decode, a clip without frames, an empty
or unreadable image folder. Trimming (``start``/``end`` seconds) is applied while reading, so the
frames outside the range are decoded at most once and never tracked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MVP4DError
from .image import load_image

#: frame rate assumed for a folder of images when none is given
DEFAULT_FOLDER_FPS = 25.0
#: file endings of the frames of an image folder
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_HINT = "Export the clip as H.264 .mp4 (or a folder of numbered PNG/JPEG frames) and try again."


def _bad(message: str, hint: str = VIDEO_HINT) -> MVP4DError:
    return MVP4DError("BAD_INPUT", message, hint)


def _natural_key(name: str) -> list:
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", name)]


@dataclass
class ClipInfo:
    """What a clip is: its source, frame rate, frame size and the frame range that will be read.

    Attributes:
        source: the video file or image folder.
        fps: frames per second of the clip (a folder's is the caller's, default 25).
        width, height: frame size in pixels.
        num_frames: frames in the whole clip (a video's container count may be an estimate).
        first, stop: the trimmed range of frame indices, ``first <= i < stop``.
        codec: the video's FourCC (``"images"`` for a folder).
    """

    source: Path
    fps: float
    width: int
    height: int
    num_frames: int
    first: int
    stop: int
    codec: str

    @property
    def num_selected(self) -> int:
        return max(self.stop - self.first, 0)

    def to_json(self) -> dict:
        return {"source": str(self.source), "fps": self.fps, "width": self.width, "height": self.height,
                "num_frames": self.num_frames, "first": self.first, "stop": self.stop, "codec": self.codec}


def _trim(fps: float, n: int, start: float | None, end: float | None) -> tuple[int, int]:
    first = 0 if start is None else int(round(start * fps))
    stop = n if end is None else min(n, int(round(end * fps)))
    if start is not None and start < 0 or end is not None and end <= 0:
        raise _bad(f"the trim range --start {start} --end {end} is not valid", "Give times in seconds, end after start.")
    if first >= stop:
        raise _bad(f"the trim range --start {start} --end {end} holds no frames of this {n / fps:.2f} s clip",
                   "Choose a range inside the clip (times in seconds).")
    return first, stop


def _folder_frames(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                  key=lambda p: _natural_key(p.name))


def open_clip(source: str | Path, *, fps: float | None = None, start: float | None = None,
              end: float | None = None) -> ClipInfo:
    """Check ``source`` (video file or image folder) and describe it; raises ``BAD_INPUT`` if unusable.

    ``fps`` is used only for image folders (a video's own rate is authoritative). The first frame
    is decoded here, so a file whose codec cannot be decoded fails now, not half-way through a job.
    """
    p = Path(source).expanduser()
    if not p.exists():
        raise _bad(f"the video {p} does not exist", "Check the path; pass a video file or a folder of frames.")
    if p.is_dir():
        frames = _folder_frames(p)
        if not frames:
            raise _bad(f"the folder {p} holds no image frames", "Put numbered .png/.jpg frames in it.")
        rate = float(fps or DEFAULT_FOLDER_FPS)
        first_img = load_image(frames[0], max_side=None)
        h, w = first_img.shape[:2]
        a, b = _trim(rate, len(frames), start, end)
        return ClipInfo(p, rate, w, h, len(frames), a, b, "images")
    import cv2

    cap = cv2.VideoCapture(str(p), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise _bad(f"{p.name} is not a video this reader can open (damaged, or not a video file)")
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
        codec = fourcc.to_bytes(4, "little").decode("ascii", "replace").strip("\x00 ") if fourcc > 0 else "?"
        rate = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        ok, frame = cap.read()
        if not ok or frame is None:
            if n > 0:  # the container lists frames but none decodes: the codec is the problem
                raise _bad(f"{p.name} uses the codec {codec!r}, which this build cannot decode",
                           "Re-encode the clip as H.264 .mp4 (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4).")
            raise _bad(f"{p.name} holds no video frames", "Record or export a clip with at least one frame.")
        if not (0.5 <= rate <= 1000.0):
            rate = float(fps or DEFAULT_FOLDER_FPS)
        h, w = frame.shape[:2]
        n = max(n, 1)
    finally:
        cap.release()
    a, b = _trim(rate, n, start, end)
    return ClipInfo(p, rate, w, h, n, a, b, codec)


def iter_frames(info: ClipInfo, begin: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, uint8 (H, W, 3) RGB)`` for the clip's trimmed range, from ``begin`` (resume).

    A video that ends before its container's frame count simply stops (the caller counts what it
    got); a folder frame that cannot be read, or has another size, is ``BAD_INPUT`` naming it.
    """
    begin = info.first if begin is None else max(begin, info.first)
    if info.codec == "images":
        for i, path in enumerate(_folder_frames(info.source)[begin:info.stop], start=begin):
            img = load_image(path, max_side=None)
            if img.shape[:2] != (info.height, info.width):
                raise _bad(f"frame {path.name} is {img.shape[1]}x{img.shape[0]}, the clip is {info.width}x{info.height}",
                           "Give every frame of the folder the same size.")
            yield i, img
        return
    import cv2

    cap = cv2.VideoCapture(str(info.source), cv2.CAP_FFMPEG)
    try:
        if begin > 0:
            cap.set(cv2.CAP_PROP_POS_FRAMES, begin)
            if int(cap.get(cv2.CAP_PROP_POS_FRAMES)) != begin:  # seeking unsupported: decode up to it
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                for _ in range(begin):
                    cap.grab()
        for i in range(begin, info.stop):
            ok, frame = cap.read()
            if not ok or frame is None:
                return
            yield i, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
