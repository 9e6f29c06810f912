"""The face crop: square boxes around the projected head, smoothed over time, and image cropping.

Paper S2.1: the crop is a square 25 % larger than a tight box around the projected head vertices,
and its position is smoothed over time with a Gaussian filter to avoid jitter. Boxes may extend
past the image; the outside is padded white and an *out-crop mask* records which crop pixels come
from the original image (a conditioning channel, :mod:`backend.conditioning.maps`).

Box convention (the pixel-centre convention of :mod:`backend.cameras`): a box is
``[x0, y0, size]`` (floats) and covers the pixel centres ``x0 ... x0 + size - 1`` horizontally and
``y0 ... y0 + size - 1`` vertically, i.e. the continuous square
``[x0 - 0.5, x0 + size - 0.5] x [y0 - 0.5, y0 + size - 0.5]``; its centre is
``(x0 + (size - 1) / 2, y0 + (size - 1) / 2)``. Cropping it to ``out_size`` pixels maps
``u' = (u - x0 + 0.5) * out_size / size - 0.5``, exactly :meth:`backend.cameras.Camera.cropped`, so
``camera.cropped(*box, out_size)`` (:func:`crop_camera`) sees the crop :func:`crop_image` makes.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np
import torch

from ..cameras import Camera
from ..errors import MVP4DError
from ..protocol import CROP_SCALE  # side of the crop / larger side of the tight head box (paper S2.1)

__all__ = ["CROP_SCALE", "CROP_SMOOTHING_FRAMES", "head_boxes", "smooth_boxes", "crop_image", "crop_images", "crop_camera", "face_crop_boxes"]

#: sigma (frames) of the temporal Gaussian smoothing of the crop boxes (S2.1), the one value the
#: inference crop (:func:`face_crop_boxes`) and the training reader (per-frame crops) share
CROP_SMOOTHING_FRAMES = 2.0


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def head_boxes(uv, vertex_mask=None, scale: float = CROP_SCALE) -> np.ndarray:
    """Square crop boxes ``(T, 3)`` ``[x0, y0, size]`` around projected vertices ``uv (T, V, 2)``.

    The box is centred on the tight bounding box of the vertices selected by ``vertex_mask (V,)``
    (all when ``None``) and its side is ``scale * max(width, height)`` of that box (at least one
    pixel). A single frame ``(V, 2)`` gives ``(1, 3)``. Non-finite coordinates of selected vertices
    (a vertex behind the camera) raise ``BAD_INPUT``.
    """
    p = _np(uv)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[-1] != 2:
        raise MVP4DError("BAD_INPUT", f"head_boxes: uv must be (T, V, 2), got {p.shape}")
    if vertex_mask is not None:
        m = np.asarray(_np(vertex_mask) if isinstance(vertex_mask, torch.Tensor) else vertex_mask).astype(bool)
        if m.shape != (p.shape[1],):
            raise MVP4DError("BAD_INPUT", f"head_boxes: vertex_mask must be ({p.shape[1]},), got {m.shape}")
        p = p[:, m]
    if p.shape[1] == 0:
        raise MVP4DError("BAD_INPUT", "head_boxes: no vertices selected")
    if not np.isfinite(p).all():
        raise MVP4DError("BAD_INPUT", "head_boxes: some head vertices do not project (behind the camera?)",
                         "Check the camera: the whole head must be in front of it.")
    if scale <= 0:
        raise MVP4DError("BAD_INPUT", f"head_boxes: scale must be positive, got {scale}")
    lo, hi = p.min(axis=1), p.max(axis=1)  # (T, 2)
    centre = 0.5 * (lo + hi)
    size = np.maximum(scale * (hi - lo).max(axis=1), 1.0)
    return _from_centre(centre, size)


def _from_centre(centre: np.ndarray, size: np.ndarray) -> np.ndarray:
    corner = centre - 0.5 * (size[:, None] - 1.0)
    return np.concatenate([corner, size[:, None]], axis=1)


def _to_centre(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = boxes[:, 2]
    return boxes[:, :2] + 0.5 * (size[:, None] - 1.0), size


def _check_boxes(boxes) -> np.ndarray:
    b = _np(boxes)
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 3:
        raise MVP4DError("BAD_INPUT", f"boxes must be (T, 3) [x0, y0, size], got {b.shape}")
    if not np.isfinite(b).all() or (b[:, 2] <= 0).any():
        raise MVP4DError("BAD_INPUT", "boxes must be finite with a positive size")
    return b


def _gaussian_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(math.ceil(4.0 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def smooth_boxes(boxes, sigma_frames: float = CROP_SMOOTHING_FRAMES) -> np.ndarray:
    """Gaussian-smooth box centres and sizes over time (``sigma_frames`` frames; edges: nearest).

    ``boxes (T, 3)``; a constant track stays constant, ``T = 1`` or ``sigma_frames <= 0`` returns
    a copy unchanged.
    """
    b = _check_boxes(boxes)
    T = b.shape[0]
    if T == 1 or sigma_frames <= 0:
        return b.copy()
    centre, size = _to_centre(b)
    k = _gaussian_kernel(float(sigma_frames))
    r = len(k) // 2
    track = np.concatenate([centre, size[:, None]], axis=1)  # (T, 3)
    idx = np.clip(np.arange(-r, T + r), 0, T - 1)  # edge handling: repeat the nearest frame
    padded = track[idx]
    out = np.stack([np.convolve(padded[:, c], k, mode="valid") for c in range(3)], axis=1)
    return _from_centre(out[:, :2], out[:, 2])


def crop_camera(camera: Camera, box, out_size: int) -> Camera:
    """The camera of the crop :func:`crop_image` makes with the same box (``Camera.cropped``)."""
    x0, y0, size = (float(v) for v in _check_boxes(box)[0])
    return camera.cropped(x0, y0, size, int(out_size))


def face_crop_boxes(
    camera: Camera,
    vertices,
    vertex_mask=None,
    *,
    scale: float = CROP_SCALE,
    sigma_frames: float = CROP_SMOOTHING_FRAMES,
) -> np.ndarray:
    """Smoothed crop boxes ``(T, 3)`` for head ``vertices (T, V, 3)`` (world) seen by ``camera``."""
    v = _np(vertices)
    if v.ndim == 2:
        v = v[None]
    T, V = v.shape[:2]
    uv, z = camera.project(v.reshape(-1, 3))
    if vertex_mask is not None:
        sel = np.broadcast_to(np.asarray(vertex_mask, dtype=bool)[None], (T, V)).reshape(-1)
    else:
        sel = np.ones(T * V, dtype=bool)
    if (z[sel] <= 0).any():
        raise MVP4DError("BAD_INPUT", "face crop: part of the head is behind the camera",
                         "Check the camera: the whole head must be in front of it.")
    return smooth_boxes(head_boxes(uv.reshape(T, V, 2), vertex_mask, scale), sigma_frames)


def _padded_region(image: np.ndarray, x: int, y: int, n: int, pad_value: float) -> np.ndarray:
    """``image[y:y+n, x:x+n]`` as float32 with a 4th valid-mask channel; outside = pad, mask 0."""
    H, W = image.shape[:2]
    out = np.empty((n, n, 4), np.float32)
    out[..., :3] = pad_value
    out[..., 3] = 0.0
    sx0, sx1 = max(x, 0), min(x + n, W)
    sy0, sy1 = max(y, 0), min(y + n, H)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y : sy1 - y, sx0 - x : sx1 - x, :3] = image[sy0:sy1, sx0:sx1]
        out[sy0 - y : sy1 - y, sx0 - x : sx1 - x, 3] = 1.0
    return out


def crop_image(image: np.ndarray, box, out_size: int, pad_value: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``box`` ``[x0, y0, size]`` out of ``image`` (H, W, 3) uint8 and resize to ``out_size``.

    Returns ``crop`` uint8 (out_size, out_size, 3), padded with ``pad_value`` (white) where the box
    leaves the image, and ``outcrop_mask`` float32 (out_size, out_size): 1 inside the original
    image, 0 in the padding (fractional along the image border after resampling). The mapping is
    that of :meth:`Camera.cropped` (see the module docstring). Shrinking uses ``INTER_AREA`` (on an
    integer-aligned region, then a sub-pixel shift), enlarging ``INTER_LINEAR``.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise MVP4DError("BAD_INPUT", f"crop_image: image must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
    x0, y0, size = (float(v) for v in _check_boxes(box)[0])
    out = int(out_size)
    if out < 1:
        raise MVP4DError("BAD_INPUT", f"crop_image: out_size must be positive, got {out_size}")
    s = out / size
    pad = float(pad_value)
    if s < 1.0:
        # area-average an integer-aligned region (cv2.resize maps u' = (u + 0.5) * s - 0.5 exactly
        # when given fx = fy = s), then shift by the sub-pixel remainder (xi - x0) * s
        xi, yi = math.floor(x0), math.floor(y0)
        n = int(math.ceil(max(x0 - xi, y0 - yi) + size)) + int(math.ceil(2.0 / s)) + 2
        region = _padded_region(img, xi, yi, n, pad)
        small = cv2.resize(region, (0, 0), fx=s, fy=s, interpolation=cv2.INTER_AREA)
        dx, dy = (xi - x0) * s, (yi - y0) * s
        if abs(dx) < 1e-9 and abs(dy) < 1e-9 and small.shape[0] >= out and small.shape[1] >= out:
            res = small[:out, :out]
        else:
            M = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
            res = cv2.warpAffine(small, M, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    else:
        src = np.concatenate([img.astype(np.float32), np.ones(img.shape[:2] + (1,), np.float32)], axis=2)
        M = np.array([[s, 0.0, (0.5 - x0) * s - 0.5], [0.0, s, (0.5 - y0) * s - 0.5]])
        res = cv2.warpAffine(src, M, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(pad, pad, pad, 0.0))
    crop = np.clip(np.rint(res[..., :3]), 0, 255).astype(np.uint8)
    mask = np.clip(res[..., 3], 0.0, 1.0).astype(np.float32)
    return crop, mask


def crop_images(images: Sequence[np.ndarray], boxes, out_size: int, pad_value: int = 255):
    """:func:`crop_image` per frame: ``(crops (T, out, out, 3) uint8, masks (T, out, out) float32)``."""
    b = _check_boxes(boxes)
    if len(images) != len(b):
        raise MVP4DError("BAD_INPUT", f"crop_images: {len(images)} images but {len(b)} boxes")
    res = [crop_image(im, bx, out_size, pad_value) for im, bx in zip(images, b)]
    return np.stack([r[0] for r in res]), np.stack([r[1] for r in res])
