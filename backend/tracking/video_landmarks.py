"""MediaPipe Face Mesh landmarks over a clip, with the detector's tracking between frames.

Unlike the photo path (:mod:`.landmarks`, ``static_image_mode=True``: a full face detection on every
image), a clip runs Face Mesh in its video mode: the face detector runs only while fewer faces are
tracked than asked for, and otherwise each frame's landmarks start from the previous frame's, which is
both faster and steadier. A new graph is built per clip (its tracking state belongs to that clip)
and closed afterwards; the models ship inside the mediapipe wheel, nothing is downloaded.

Frames where no face is found are not dropped: :func:`fill_gaps` fills their landmarks from the
nearest frames with a face (linear in time between two, held at the clip's ends) and returns the
ranges, so the caller can report them. Where several faces are found the largest is used.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .landmarks import NUM_LANDMARKS, FaceLandmarks, quiet_native_stderr, run_graph

#: faces Face Mesh follows in a clip once a second person has been seen (the largest is used)
VIDEO_MAX_FACES = 2
#: frames between checks for a second face while one face is tracked (a static-mode, two-face pass)
CENSUS_EVERY = 25


@dataclass
class ClipLandmarks:
    """Landmarks of every frame of a clip (pixels, pixel centres at integer coordinates).

    Attributes:
        points: (T, 478, 2) float64; frames without a face hold NaN until :func:`fill_gaps`.
        found: (T,) bool, a face was detected in that frame.
        faces: (T,) int, how many faces were detected.
        width, height: frame size.
    """

    points: np.ndarray
    found: np.ndarray
    faces: np.ndarray
    width: int
    height: int
    filled_ranges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(len(self.found))

    def box_sizes(self) -> np.ndarray:
        """(T,) longest side of each frame's landmark box, pixels."""
        span = np.nanmax(self.points, axis=1) - np.nanmin(self.points, axis=1)
        return span.max(-1)

    def save(self, path: str | os.PathLike) -> None:
        np.savez(path, points=self.points.astype(np.float32), found=self.found, faces=self.faces,
                 size=np.array([self.width, self.height]))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ClipLandmarks":
        with np.load(path, allow_pickle=False) as d:
            w, h = (int(x) for x in d["size"])
            return cls(points=d["points"].astype(np.float64), found=d["found"].astype(bool),
                       faces=d["faces"].astype(np.int64), width=w, height=h)


class VideoFaceMesh:
    """Face Mesh in video (tracking) mode for one clip; use as a context manager.

    It tracks one face (Face Mesh then skips its face detector while the face is followed: ~9 instead
    of ~14 ms per 512² frame here) and every ``CENSUS_EVERY`` frames looks for a second face with a
    static-mode two-face pass. Once a second face is seen it switches to tracking two faces for the
    rest of the clip (the detector runs every frame), so the largest face is always the one used.
    """

    def __init__(self) -> None:
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.graph = self._new_graph(static=False, faces=1)
        self.census = self._new_graph(static=True, faces=VIDEO_MAX_FACES)
        self.several = False
        self.frame = 0

    @staticmethod
    def _new_graph(*, static: bool, faces: int) -> Any:
        with quiet_native_stderr():
            import mediapipe as mp

            graph = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=static, refine_landmarks=True, max_num_faces=faces,
                min_detection_confidence=0.5, min_tracking_confidence=0.5,
            )
            run_graph(graph, np.full((64, 64, 3), 255, np.uint8))  # start its threads while quiet (no face)
        return graph

    def __enter__(self) -> "VideoFaceMesh":
        return self

    def __exit__(self, *exc: object) -> None:
        for graph in (self.graph, self.census):
            with contextlib.suppress(Exception):
                graph.close()

    def _run(self, graph: Any, frame: np.ndarray) -> list[FaceLandmarks]:
        h, w = frame.shape[:2]
        result = run_graph(graph, frame)
        out = []
        for face in result.multi_face_landmarks or []:
            xyz = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float64)
            if xyz.shape == (NUM_LANDMARKS, 3):
                out.append(FaceLandmarks.from_normalized(xyz, w, h))
        out.sort(key=lambda f: f.area, reverse=True)
        return out

    def faces(self, frame: np.ndarray) -> list[FaceLandmarks]:
        """Faces in the clip's next RGB uint8 frame, largest first (frames must come in order)."""
        frame = np.ascontiguousarray(frame)
        check = not self.several and self.frame % CENSUS_EVERY == 0
        self.frame += 1
        if check and len(self._run(self.census, frame)) > 1:
            self.several = True  # from here on: track two faces, as many as the census saw
            with contextlib.suppress(Exception):
                self.graph.close()
            self.graph = self._new_graph(static=False, faces=VIDEO_MAX_FACES)
        return self._run(self.graph, frame)


def detect_clip(
    frames: Iterable[tuple[int, np.ndarray]], num_frames: int, width: int, height: int, *,
    first: int = 0, start: ClipLandmarks | None = None,
    on_frame: Callable[[int, int], None] | None = None, check: Callable[[], None] | None = None,
    mesh_factory: Callable[[], VideoFaceMesh] = VideoFaceMesh,
) -> ClipLandmarks:
    """Landmarks of ``num_frames`` frames numbered from ``first``; ``frames`` yields ``(index, rgb)``.

    ``start`` (resume) holds frames already done: ``frames`` then starts after them. ``on_frame(done,
    total)`` reports progress; ``check`` is a cancel point before every frame. If the clip ends
    early the result is cut to the frames that came. ``mesh_factory`` gives the graph (closed here):
    a caller can build it ahead, e.g. in a thread while the clip is opened and the head model built.
    """
    if start is not None:
        clip = start
    else:
        clip = ClipLandmarks(points=np.full((num_frames, NUM_LANDMARKS, 2), np.nan), found=np.zeros(num_frames, bool),
                             faces=np.full(num_frames, -1, np.int64), width=width, height=height)
    last = -1
    with mesh_factory() as mesh:
        for index, rgb in frames:
            if check is not None:
                check()
            k = index - first
            if k >= num_frames:
                break
            faces = mesh.faces(rgb)
            clip.faces[k] = len(faces)
            if faces:
                clip.points[k] = faces[0].points
                clip.found[k] = True
            last = k
            if on_frame is not None:
                on_frame(k + 1, num_frames)
    done = int(np.max(np.nonzero(clip.faces >= 0)[0], initial=-1)) + 1
    if done < num_frames and last >= 0:
        clip = ClipLandmarks(clip.points[:done], clip.found[:done], clip.faces[:done], width, height)
    return clip


def gap_ranges(found: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` frame ranges where ``found`` is False."""
    ranges, k, n = [], 0, len(found)
    while k < n:
        if not found[k]:
            j = k
            while j + 1 < n and not found[j + 1]:
                j += 1
            ranges.append((k, j))
            k = j + 1
        else:
            k += 1
    return ranges


def fill_gaps(clip: ClipLandmarks) -> list[tuple[int, int]]:
    """Fill frames without a face from their neighbours (in place); return the filled ranges.

    Between two frames with a face the landmarks are interpolated linearly in time; before the
    first and after the last such frame they are held. The caller must have checked that at least
    one frame has a face.
    """
    ranges = gap_ranges(clip.found)
    good = np.nonzero(clip.found)[0]
    t = np.arange(clip.num_frames)
    flat = clip.points.reshape(clip.num_frames, -1)
    for c in range(flat.shape[1]):
        flat[:, c] = np.interp(t, good, flat[good, c])
    clip.points = flat.reshape(clip.points.shape)
    clip.filled_ranges = ranges
    return ranges
