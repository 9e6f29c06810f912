"""Foreground matte of the reference portrait and compositing on white (paper S2.1).

MediaPipe's selfie segmentation (general 256x256 model, shipped in the wheel) gives a soft person
mask; it is lightly feathered so the white composite has no hard staircase edge.
"""

from __future__ import annotations

import cv2
import numpy as np

from .image import as_rgb_uint8
from .landmarks import mediapipe_graph, run_graph

#: feathering blur, as a fraction of the longer image side (0.4 % ~ 2 px at 512 px)
FEATHER_FRACTION = 0.004


def _selfie_segmentation():
    return mediapipe_graph("selfie_segmentation", lambda mp: mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0))


def person_alpha(image: np.ndarray) -> np.ndarray:
    """Soft person matte, float32 (H, W) in [0, 1] (1 = person)."""
    img = as_rgb_uint8(image)
    mask = run_graph(_selfie_segmentation(), img).segmentation_mask
    alpha = np.clip(np.nan_to_num(np.asarray(mask, dtype=np.float32)), 0.0, 1.0)
    if alpha.shape != img.shape[:2]:  # MediaPipe returns image resolution; be safe anyway
        alpha = cv2.resize(alpha, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    sigma = FEATHER_FRACTION * max(img.shape[:2])
    if sigma >= 0.5:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
    return np.clip(alpha, 0.0, 1.0).astype(np.float32)


def composite_on_white(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``image * alpha + 255 * (1 - alpha)``, uint8 (H, W, 3)."""
    a = np.asarray(alpha, dtype=np.float32)[..., None]
    out = np.asarray(image, dtype=np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def matte_to_white(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask the person and put them on a white background.

    Returns ``(matted uint8 (H, W, 3), alpha float32 (H, W) in [0, 1])``.
    """
    img = as_rgb_uint8(image)
    alpha = person_alpha(img)
    return composite_on_white(img, alpha), alpha
