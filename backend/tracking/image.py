"""Reference-image I/O: load anything Pillow reads as uint8 RGB, with errors a user can act on.

Every problem with the file (missing, a folder, empty, truncated, not an image, too small, too
large) is raised as :class:`~backend.errors.MVP4DError` ``BAD_INPUT`` naming the path and what is
wrong. Images are returned in the project's I/O layout: numpy ``uint8`` (H, W, 3) RGB, EXIF
orientation applied, alpha composited on white (the paper masks the reference to a white
background, S2.1).

Huge photos (docs/reliability.md, section 7): the pixel count is checked from the header before
anything is decoded (:data:`MAX_IMAGE_PIXELS`, Pillow's own decompression-bomb limit, which stays
on), and images are brought down to :data:`WORK_MAX_SIDE` right after decoding -- JPEGs through
the decoder's DCT scaling (``Image.draft``), so a 50-megapixel JPEG is never held at full size.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import MVP4DError, bad_input
from ..fsutil import atomic_path

#: smallest accepted side, in pixels (MediaPipe cannot find landmarks on anything smaller)
MIN_IMAGE_SIDE = 64
#: largest accepted pixel count, checked before decoding: Pillow's decompression-bomb limit
#: (``Image.MAX_IMAGE_PIXELS`` as shipped, 89.5 MP = 1024**3 // 4 // 3); a larger photo is refused
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
#: longest side the pipeline works at: photos are downscaled to it right after decoding. The avatar
#: sees the head through a 512-px crop (``protocol.CROP_SCALE``); 2048 px keeps a face that fills a
#: quarter of the photo at full crop resolution, and bounds matting/detection cost (~12 MB per image).
WORK_MAX_SIDE = 2048

_HINT_FILE = "Pass a readable PNG or JPEG photo of a face."


def load_image(path: str | os.PathLike, max_side: int | None = WORK_MAX_SIDE) -> np.ndarray:
    """Read an image file as ``uint8`` (H, W, 3) RGB, at most ``max_side`` pixels on its longer side.

    See :func:`load_image_and_size` for the details.
    """
    return load_image_and_size(path, max_side)[0]


def load_image_and_size(
    path: str | os.PathLike, max_side: int | None = WORK_MAX_SIDE,
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_image` plus the file's own ``(width, height)`` (EXIF orientation applied).

    Handles EXIF orientation, RGBA/LA/palette transparency (composited on white), greyscale,
    16-bit and float images and multi-frame files (first frame). Raises ``BAD_INPUT`` for a missing
    path, a folder, an empty/corrupt/truncated file, a non-image, an image smaller than
    :data:`MIN_IMAGE_SIDE` pixels on a side or larger than :data:`MAX_IMAGE_PIXELS` (checked from
    the header, before decoding). ``max_side=None`` keeps the full resolution.
    """
    p = Path(path)
    if not p.exists():
        raise bad_input("does not exist", _HINT_FILE, where=f"reference image {p}:")
    if p.is_dir():
        raise bad_input("is a folder, not an image file", _HINT_FILE, where=f"reference image {p}:")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise bad_input(f"cannot be read ({e.strerror or e})", _HINT_FILE, where=f"reference image {p}:") from e
    if size == 0:
        raise bad_input("is an empty file (0 bytes)", _HINT_FILE, where=f"reference image {p}:")
    try:
        with warnings.catch_warnings():
            # Pillow's notes (palette transparency, odd EXIF) are noise; its decompression-bomb
            # warning is not: it becomes an error (and MAX_IMAGE_PIXELS is checked below anyway)
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                check_pixel_count(im.size[0], im.size[1], str(p))
                full_w, full_h = im.size
                if max_side is not None and max(im.size) > max_side:
                    target = _fit_size(im.size[0], im.size[1], max_side)
                    im.draft("RGB", target)  # JPEG: decode at 1/2, 1/4 or 1/8 scale; others: no-op
                im.load()  # decode now: truncated or corrupt data fails here, not later
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # stored rotated by 90 degrees
                    full_w, full_h = full_h, full_w
                im = ImageOps.exif_transpose(im)
                rgb = to_rgb_uint8(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _too_large(str(p), f"({e})") from e
    except PermissionError as e:
        raise bad_input("cannot be read (permission denied)", "Check the file's permissions.",
                        where=f"reference image {p}:") from e
    except UnidentifiedImageError as e:
        raise bad_input("is not an image Pillow can read (unknown or corrupt format)", _HINT_FILE,
                        where=f"reference image {p}:") from e
    except (OSError, SyntaxError, ValueError) as e:  # truncated data, broken chunks, bad headers
        raise bad_input(f"is corrupt or truncated ({e})", _HINT_FILE, where=f"reference image {p}:") from e
    check_image_size(rgb, str(p))
    return downscale_to(rgb, max_side), (full_w, full_h)


def _fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """``(w, h)`` scaled so the longer side is ``max_side`` (aspect kept, at least 1 px)."""
    s = max_side / max(width, height)
    return max(1, int(round(width * s))), max(1, int(round(height * s)))


def downscale_to(image: np.ndarray, max_side: int | None = WORK_MAX_SIDE) -> np.ndarray:
    """``image`` (uint8 (H, W, 3)) with its longer side brought down to ``max_side`` (area filter).

    Returned unchanged when it already fits; never upscales. Deterministic (OpenCV's INTER_AREA).
    """
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image
    import cv2

    tw, th = _fit_size(w, h, max_side)
    return np.ascontiguousarray(cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA))


def _too_large(where: str, detail: str = "") -> MVP4DError:
    return MVP4DError(
        "BAD_INPUT",
        f"{where} is too large: more than {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels {detail}".strip(),
        f"Downscale the photo (the pipeline works at {WORK_MAX_SIDE} px on the longer side) and retry.",
    )


def check_pixel_count(width: int, height: int, where: str = "reference image") -> None:
    """Refuse an image of more than :data:`MAX_IMAGE_PIXELS` pixels (``BAD_INPUT``), before decoding."""
    if int(width) * int(height) > MAX_IMAGE_PIXELS:
        raise _too_large(where, f"({int(width)}x{int(height)} = {int(width) * int(height) / 1e6:.1f} MP)")


def check_image_size(image: np.ndarray, where: str = "reference image") -> None:
    """Reject images smaller than :data:`MIN_IMAGE_SIDE` on a side (``BAD_INPUT``)."""
    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise MVP4DError(
            "BAD_INPUT",
            f"{where} is {w}x{h} pixels; at least {MIN_IMAGE_SIDE} pixels on each side are needed",
            "Use a larger photo; the face should be at least about 100 pixels across.",
        )


def to_rgb_uint8(im: Image.Image) -> np.ndarray:
    """Convert any Pillow image to ``uint8`` (H, W, 3) RGB; transparency is composited on white."""
    mode = im.mode
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        a = rgba[..., 3:4] / 255.0
        out = rgba[..., :3] * a + 255.0 * (1.0 - a)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if mode == "F":
            hi = 1.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 255.0
        else:  # 16-bit greyscale (Pillow loads it as I;16 or as 32-bit I holding 0..65535)
            hi = 65535.0 if np.nanmax(arr, initial=0.0) > 255 or mode.startswith("I;16") else 255.0
        grey = np.clip(np.rint(np.nan_to_num(arr) / hi * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def as_rgb_uint8(image: np.ndarray, where: str = "reference image") -> np.ndarray:
    """Validate an in-memory image and return it as contiguous ``uint8`` (H, W, 3) RGB.

    Accepts (H, W) greyscale, (H, W, 3) RGB and (H, W, 4) RGBA (composited on white); ``uint8`` as is,
    floats taken to be in [0, 1]. More than :data:`MAX_IMAGE_PIXELS` pixels is ``BAD_INPUT``.
    """
    arr = np.asarray(image)
    if arr.ndim >= 2:
        check_pixel_count(arr.shape[1], arr.shape[0], where)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise MVP4DError("BAD_INPUT", f"{where} must be an (H, W, 3) RGB array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise MVP4DError("BAD_INPUT", f"{where} must be uint8 or float in [0, 1], got {arr.dtype}")
        arr = np.clip(np.rint(np.nan_to_num(arr) * 255.0), 0, 255).astype(np.uint8)
    if arr.shape[2] == 4:
        arr = to_rgb_uint8(Image.fromarray(arr))
    check_image_size(arr, where)
    return np.ascontiguousarray(arr)


def save_png_atomic(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write ``uint8`` (H, W), (H, W, 3) or (H, W, 4) as PNG atomically; return the path.

    The PNG is encoded into a temporary file next to ``path`` and moved into place with
    ``os.replace``, so ``path`` never holds a partial image (an encoder error leaves no file).
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"save_png_atomic needs uint8 (H, W[, 3|4]), got {arr.dtype} {arr.shape}")
    pil = Image.fromarray(np.ascontiguousarray(arr))  # L, RGB or RGBA from the shape
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG")
    return Path(path)


def default_reference_image() -> np.ndarray:
    """Scikit-image's astronaut (Eileen Collins, NASA, public domain), 512x512 RGB; ships in the wheel."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut(), dtype=np.uint8)

