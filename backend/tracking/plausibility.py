"""Is this a person's face we can build an avatar from? Refuse (``NO_FACE``) or warn clearly.

MediaPipe Face Mesh (the legacy ``mp.solutions`` graph, :mod:`.landmarks`) always returns a
human-shaped mesh once its detector fires, and it does fire on a cat, a colour wheel or coins when
the tile search looks hard enough; the FLAME fit then fits that mesh as well as a real face's. Three
independent checks therefore run on what was found (docs/reliability.md, section 6, records the
measurements behind every threshold):

1. **size**: a face box under :data:`MIN_FACE_PX` is refused, under :data:`SMALL_FACE_PX` warned.
2. **cut off**: the share of the 478 landmarks that fall outside the image; above
   :data:`CUT_OFF_REFUSE` refused, above :data:`CUT_OFF_WARN` warned.
3. **a human face?** :func:`face_score`: MediaPipe's two BlazeFace detectors (short and full range,
   shipped in the wheel; the solutions API exposes their scores, not the mesh model's presence
   flag) run on crops of the face made upright by the eye line at four framings; the best score
   counts. Below :data:`FACE_SCORE_REFUSE` refused, below :data:`FACE_SCORE_WARN` warned.

After the fit, :func:`check_fit` warns about an implausible result: a large landmark error, FLAME
shape or expression coefficients far outside the prior (they are in standard deviations), or a head
turned far from the camera.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from ..errors import MVP4DError
from .landmarks import FaceLandmarks, mediapipe_graph, run_graph
from .result import TrackResult

#: face box (longest side of the landmark box, px) below which the photo is refused: the avatar's
#: 512-px reference crop would upscale it more than ~5x
MIN_FACE_PX = 48
#: below this the user is warned that detail will be soft (the astronaut's face box is 106 px)
SMALL_FACE_PX = 96
#: share of landmarks outside the image: refuse above, warn above
CUT_OFF_REFUSE = 0.25
CUT_OFF_WARN = 0.05
#: best BlazeFace score on the upright face crops: refuse below, warn below
FACE_SCORE_REFUSE = 0.65
FACE_SCORE_WARN = 0.8
#: crop sizes (multiples of the face box) and side (px) the detectors see
SCORE_CROP_SCALES = (1.5, 2.0, 2.5, 3.0)
SCORE_CROP_PX = 256
#: MediaPipe ids of the outer eye corners (subject's right, left) that set the upright rotation
_EYE_OUTER = (33, 263)
#: fit plausibility warnings: mean landmark error as a fraction of the face box, largest |shape| and
#: |expression| coefficient (standard deviations), head turned away from the camera (degrees)
POOR_FIT_RELATIVE_ERROR = 0.035
SHAPE_WARN_STD = 2.5
EXPR_WARN_STD = 2.5
HEAD_TURN_WARN_DEG = 50.0

_HINT = "Use a photo of a person's face, roughly frontal, sharp and well lit, filling a good part of the picture."


def _detector(model: int) -> Any:
    return mediapipe_graph(
        f"face_detection_{model}",
        lambda mp: mp.solutions.face_detection.FaceDetection(model_selection=model, min_detection_confidence=0.05),
    )


def upright_crop(image: np.ndarray, face: FaceLandmarks, scale: float, size: int = SCORE_CROP_PX) -> np.ndarray:
    """A ``size`` px square around the face, ``scale`` face boxes wide, rotated so the eyes are level."""
    c = face.center
    e = face.points[_EYE_OUTER[1]] - face.points[_EYE_OUTER[0]]
    angle = math.degrees(math.atan2(float(e[1]), float(e[0])))
    side = max(scale * face.box_size, 1.0)
    M = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), angle, size / side)
    M[:, 2] += np.array([size / 2.0, size / 2.0]) - c
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.warpAffine(np.ascontiguousarray(image), M, (size, size), flags=interp, borderMode=cv2.BORDER_REPLICATE)


def face_score(image: np.ndarray, face: FaceLandmarks) -> float:
    """How sure MediaPipe's face detectors are that ``face`` is a human face: best score in [0, 1]."""
    best = 0.0
    for scale in SCORE_CROP_SCALES:
        crop = upright_crop(image, face, scale)
        for model in (0, 1):
            for det in run_graph(_detector(model), crop).detections or []:
                best = max(best, float(det.score[0]))
    return best


def cut_off_fraction(face: FaceLandmarks) -> float:
    """Share of the landmarks outside the image (a face cut by the border)."""
    w, h = face.image_size
    u, v = face.points[:, 0], face.points[:, 1]
    outside = (u < -0.5) | (u > w - 0.5) | (v < -0.5) | (v > h - 0.5)
    return float(outside.mean())


def check_face(image: np.ndarray, face: FaceLandmarks, warn: Callable[[str], None] | None = None) -> dict[str, float]:
    """Refuse (``NO_FACE``) or warn about a face that is too small, cut off or not a person's.

    Returns the measurements (``face_box_px``, ``face_cut_off``, ``face_score``) for the track info.
    """
    h, w = image.shape[:2]
    size = face.box_size
    if size < MIN_FACE_PX:
        raise MVP4DError(
            "NO_FACE",
            f"the face is only {size:.0f} pixels across in the {w}x{h} photo; at least {MIN_FACE_PX} are needed",
            "Use a photo where the face is at least ~100 pixels across, or crop the photo around the head "
            "(cropping keeps the face's pixels; a smaller photo does not help).",
        )
    cut = cut_off_fraction(face)
    if cut > CUT_OFF_REFUSE:
        raise MVP4DError(
            "NO_FACE",
            f"the face is cut off by the picture's border ({100 * cut:.0f} % of the face lies outside the image)",
            "Use a photo that shows the whole face, with some space around the head.",
        )
    score = face_score(image, face)
    if score < FACE_SCORE_REFUSE:
        raise MVP4DError(
            "NO_FACE",
            f"what was found does not look like a person's face (face detector score {score:.2f}, "
            f"needs {FACE_SCORE_REFUSE:.2f}); animals, drawings and objects cannot be made into an avatar",
            _HINT,
        )
    if warn is not None:
        if size < SMALL_FACE_PX:
            warn(f"the face is small ({size:.0f} pixels across); the avatar's detail will be soft. "
                 "A photo where the face is larger gives a sharper result")
        if cut > CUT_OFF_WARN:
            warn(f"{100 * cut:.0f} % of the face lies outside the picture; the missing part will be guessed")
        if score < FACE_SCORE_WARN:
            warn(f"the face detector is unsure this is a person's face (score {score:.2f}); if it is not, "
                 "the avatar will be meaningless. A sharp, upright, frontal photo of a person works best")
    return {"face_box_px": round(size, 2), "face_cut_off": round(cut, 4), "face_score": round(score, 4)}


def head_turn_deg(result: TrackResult) -> float:
    """Angle between the face's forward axis and the camera's viewing axis (roll ignored), degrees."""
    R = np.asarray(result.camera.world_to_cam, dtype=np.float64)[:3, :3]
    return math.degrees(math.acos(float(np.clip(-R[2, 2], -1.0, 1.0))))


def fit_measures(result: TrackResult) -> dict[str, float]:
    """The fit's plausibility numbers: largest |shape|/|expression| coefficient, head turn, error."""
    p = result.params
    shape = np.abs(p.shape.detach().cpu().numpy()) if p.shape.numel() else np.zeros(1)
    expr = np.abs(p.expr.detach().cpu().numpy()) if p.expr.numel() else np.zeros(1)
    return {
        "shape_max_std": round(float(shape.max()), 3),
        "expr_max_std": round(float(expr.max()), 3),
        "head_turn_deg": round(head_turn_deg(result), 2),
        "relative_error": round(float(result.relative_error or 0.0), 5),
    }


def check_fit(result: TrackResult, warn: Callable[[str], None] | None = None) -> dict[str, float]:
    """Warn when the fitted head is implausible for a person; returns :func:`fit_measures`."""
    m = fit_measures(result)
    result.info.update(m)
    if warn is None:
        return m
    if m["relative_error"] > POOR_FIT_RELATIVE_ERROR:
        warn(f"the head model fits the face only roughly (mean landmark error {result.mean_error_px:.1f} px, "
             f"{100 * m['relative_error']:.1f} % of the face size); a more frontal, unoccluded photo helps")
    if m["shape_max_std"] > SHAPE_WARN_STD or m["expr_max_std"] > EXPR_WARN_STD:
        warn(f"the fitted head is far from typical human proportions (shape {m['shape_max_std']:.1f}, "
             f"expression {m['expr_max_std']:.1f} standard deviations); check that the photo shows a person's "
             "face with a neutral or moderate expression")
    if m["head_turn_deg"] > HEAD_TURN_WARN_DEG:
        warn(f"the head is turned {m['head_turn_deg']:.0f} degrees away from the camera; "
             "the hidden side will be guessed. A more frontal photo gives a better avatar")
    return m
