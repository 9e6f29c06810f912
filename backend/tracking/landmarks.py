"""MediaPipe Face Mesh landmarks (478 points, iris refinement on) in the project's pixel convention.

MediaPipe reports normalised coordinates whose pixel centres sit at half-integers (x_norm = 0 is the
left edge of the image). The project's cameras put pixel centres at integer coordinates
(``docs/architecture.md``), so a landmark lands at ``u = x_norm * W - 0.5``, ``v = y_norm * H - 0.5``.

The legacy ``mp.solutions`` graphs ship their models inside the wheel: nothing is downloaded. One
Face Mesh graph is built per process on first use (building one costs ~0.1 s and a thread pool) and
reused; MediaPipe's start-up chatter on stderr (TFLite/absl/protobuf) is swallowed while it starts.
A graph is not meant to be driven from several threads at once (jobs run their stages one by one).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MVP4DError
from .image import as_rgb_uint8

NUM_LANDMARKS = 478
#: how many faces Face Mesh looks for; the largest is used and the others are reported
MAX_FACES = 6
#: MediaPipe's short-range face detector misses faces smaller than ~15 % of the image side (a
#: 100 px face in a 1024 px photo). When the whole image yields none, half-overlapping square tiles of
#: these fractions of the shorter side are searched, coarse to fine, stopping at the first that finds one.
SEARCH_TILE_FRACTIONS = (0.5, 0.25)
#: tiles smaller than this are not searched (their faces would be too small to track)
MIN_SEARCH_TILE = 128

_PROTOBUF_NOISE = r"SymbolDatabase\.GetPrototype\(\) is deprecated"


@dataclass
class FaceLandmarks:
    """One face's 478 MediaPipe landmarks in pixels (pixel centres at integer coordinates).

    Attributes:
        points: (478, 2) float64 ``(u, v)`` pixel coordinates.
        z: (478,) float64 MediaPipe's relative depth, scaled to pixels (``z_norm * W``; smaller is
            nearer the camera, origin near the head centre). Not metric; kept for diagnostics.
        box: ``(u0, v0, u1, v1)`` bounding box of ``points``.
        image_size: ``(W, H)`` of the image the landmarks were detected on.
    """

    points: np.ndarray
    z: np.ndarray
    box: tuple[float, float, float, float]
    image_size: tuple[int, int]

    @property
    def area(self) -> float:
        u0, v0, u1, v1 = self.box
        return float(max(u1 - u0, 0.0) * max(v1 - v0, 0.0))

    @property
    def box_size(self) -> float:
        """Longest side of the landmark box, pixels (the scale errors are measured against)."""
        u0, v0, u1, v1 = self.box
        return float(max(u1 - u0, v1 - v0))

    @property
    def center(self) -> np.ndarray:
        u0, v0, u1, v1 = self.box
        return np.array([(u0 + u1) / 2.0, (v0 + v1) / 2.0])

    @classmethod
    def from_normalized(
        cls,
        xyz: np.ndarray,
        width: int,
        height: int,
        offset: tuple[int, int] = (0, 0),
        image_size: tuple[int, int] | None = None,
    ) -> "FaceLandmarks":
        """Build from MediaPipe's normalised (478, 3) ``x, y, z`` on a ``width`` x ``height`` image.

        ``offset`` is that image's top-left pixel ``(col, row)`` in the full image of size
        ``image_size`` (a tile of it), default: the image itself.
        """
        xyz = np.asarray(xyz, dtype=np.float64)
        pts = np.stack([xyz[:, 0] * width - 0.5 + offset[0], xyz[:, 1] * height - 0.5 + offset[1]], axis=1)
        box = (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))
        size = (int(width), int(height)) if image_size is None else (int(image_size[0]), int(image_size[1]))
        return cls(points=pts, z=xyz[:, 2] * width, box=box, image_size=size)

    def to_json(self) -> dict[str, Any]:
        return {
            "points": np.round(self.points, 4).tolist(),
            "z": np.round(self.z, 4).tolist(),
            "box": list(self.box),
            "image_size": list(self.image_size),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FaceLandmarks":
        return cls(
            points=np.asarray(d["points"], dtype=np.float64).reshape(-1, 2),
            z=np.asarray(d["z"], dtype=np.float64).reshape(-1),
            box=tuple(float(x) for x in d["box"]),  # type: ignore[arg-type]
            image_size=(int(d["image_size"][0]), int(d["image_size"][1])),
        )


# ---------------------------------------------------------------------------------------------
# MediaPipe graphs: one per process, built lazily
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file while MediaPipe starts its graph threads.

    The TFLite/absl start-up lines ("Created TensorFlow Lite XNNPACK delegate", "Feedback manager
    requires ...") are written by native code straight to fd 2, so ``sys.stderr`` redirection cannot
    catch them. If the block raises, whatever was captured is written back to stderr so real native
    errors are not lost. Used only around graph construction and a warm-up call.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (embedded interpreters): do nothing
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                sink.seek(0)
                with contextlib.suppress(Exception):
                    sys.stderr.write(sink.read().decode("utf-8", "replace"))


_GRAPHS: dict[str, tuple[int, Any]] = {}  # name -> (pid that built it, graph)


def mediapipe_graph(name: str, build: Callable[[Any], Any]) -> Any:
    """The per-process MediaPipe graph ``name``, built by ``build(mp)`` on first use.

    Lock-free: two threads racing on the first call may both build one; the last one stays, which is
    harmless. A graph inherited through ``fork`` is not reused (its threads did not survive).
    """
    hit = _GRAPHS.get(name)
    if hit is not None and hit[0] == os.getpid():
        return hit[1]
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_native_stderr():
        import mediapipe as mp

        graph = build(mp)
        run_graph(graph, np.full((64, 64, 3), 255, np.uint8))  # warm-up: start the threads while quiet
    _GRAPHS[name] = (os.getpid(), graph)
    return graph


def run_graph(graph: Any, image: np.ndarray) -> Any:
    """``graph.process(image)`` without protobuf's deprecation warning (emitted on every call)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PROTOBUF_NOISE, category=UserWarning)
        return graph.process(image)


def _face_mesh() -> Any:
    return mediapipe_graph(
        "face_mesh",
        lambda mp: mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, refine_landmarks=True, max_num_faces=MAX_FACES, min_detection_confidence=0.5
        ),
    )


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _faces_in(img: np.ndarray, x0: int = 0, y0: int = 0, full_size: tuple[int, int] | None = None) -> list[FaceLandmarks]:
    """Face Mesh on ``img`` (a tile at ``(x0, y0)`` of an image of ``full_size``), full-image pixels."""
    h, w = img.shape[:2]
    result = run_graph(_face_mesh(), np.ascontiguousarray(img))
    faces = []
    for face in result.multi_face_landmarks or []:
        xyz = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float64)
        if xyz.shape != (NUM_LANDMARKS, 3):  # refine_landmarks=True always gives 478; guard anyway
            raise MVP4DError("INTERNAL", f"MediaPipe returned {xyz.shape[0]} landmarks, expected {NUM_LANDMARKS}")
        faces.append(FaceLandmarks.from_normalized(xyz, w, h, offset=(x0, y0), image_size=full_size))
    return faces


def _tile_starts(length: int, tile: int) -> list[int]:
    starts = list(range(0, length - tile + 1, max(tile // 2, 1)))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def _search_tiles(img: np.ndarray, check: Callable[[], None] | None = None) -> list[FaceLandmarks]:
    """Faces too small for the whole-image detector: search tiles, merge duplicates.

    ``check`` (a cancel point) runs before every tile: a 2048-px photo has up to 49 of them.
    """
    h, w = img.shape[:2]
    for fraction in SEARCH_TILE_FRACTIONS:
        tile = int(round(min(h, w) * fraction))
        if tile < MIN_SEARCH_TILE:
            break
        found: list[tuple[bool, FaceLandmarks]] = []
        for y0 in _tile_starts(h, tile):
            for x0 in _tile_starts(w, tile):
                if check is not None:
                    check()
                for f in _faces_in(img[y0 : y0 + tile, x0 : x0 + tile], x0, y0, (w, h)):
                    u0, v0, u1, v1 = f.box
                    m = 0.02 * tile  # a face touching an inner tile edge is probably cut off
                    cut = (x0 > 0 and u0 < x0 + m) or (y0 > 0 and v0 < y0 + m)
                    cut |= (x0 + tile < w and u1 > x0 + tile - m) or (y0 + tile < h and v1 > y0 + tile - m)
                    found.append((cut, f))
        if found:
            found.sort(key=lambda cf: (cf[0], -cf[1].area))  # whole faces first, then larger
            merged: list[FaceLandmarks] = []
            for _, f in found:
                if all(np.linalg.norm(f.center - g.center) > 0.5 * max(f.box_size, g.box_size) for g in merged):
                    merged.append(f)
            return merged
    return []


def detect_faces(image: np.ndarray, search: bool = True, check: Callable[[], None] | None = None) -> list[FaceLandmarks]:
    """All faces MediaPipe Face Mesh finds in ``image`` (uint8 (H, W, 3) RGB), largest box first.

    With ``search`` (default), an image where the whole-image pass finds nothing is searched again
    in tiles (:data:`SEARCH_TILE_FRACTIONS`), so faces down to ~5 % of the image side are found.
    ``check`` is a cancel point run between tiles.
    """
    img = as_rgb_uint8(image)
    faces = _faces_in(img)
    if not faces and search:
        faces = _search_tiles(img, check)
    faces.sort(key=lambda f: f.area, reverse=True)
    return faces


def detect_landmarks(
    image: np.ndarray, warn: Callable[[str], None] | None = None, check: Callable[[], None] | None = None,
) -> FaceLandmarks:
    """The landmarks of the one face to track: the largest, with a warning if there are several.

    Raises ``NO_FACE`` when MediaPipe finds none. Whether it is a usable human face is decided
    afterwards by :func:`backend.tracking.plausibility.check_face`.
    """
    faces = detect_faces(image, check=check)
    if not faces:
        h, w = np.asarray(image).shape[:2]
        raise MVP4DError(
            "NO_FACE",
            f"no face found in the reference image ({w}x{h} pixels)",
            "Use a photo where one face is clearly visible, roughly frontal and at least ~100 pixels across; "
            "if the face is small in the picture, crop the photo around the head.",
        )
    if len(faces) > 1 and warn is not None:
        warn(f"found {len(faces)} faces; using the largest")
    return faces[0]
