"""Reference image -> FLAME parameters + reference camera (paper S2.1; the tracker replaces FlowFace).

:func:`track_image` runs the whole stage: load the photo (:mod:`.image`), detect MediaPipe's 478
landmarks (:mod:`.landmarks`), matte the person onto white (:mod:`.matting`) and fit FLAME and the
camera (:mod:`.fit`). The result is canonical: the head sits at identity pose (``global_rot = 0``,
``transl = 0``) and the reference camera holds the head pose (docs/architecture.md).
:func:`track_from_params` is the no-tracking path for users who bring their own FLAME parameters and
camera (the Blender rig). Both can write a track folder that :func:`load_track` reads back:

=====================  ==========================================================================
``flame_params.npz``   one frame, ``protocol.FLAME_PARAM_KEYS`` (``FlameParams.save_npz``)
``camera.json``        the reference camera, ``protocol.CameraSpec`` JSON
``matted.png``         the reference image on white; ``alpha.png`` its matte (8-bit)
``landmarks.json``     detected vs projected landmarks of the embedded ids, errors (tracking only)
``overlay.png``        the image with detected (green) and fitted (red) landmarks, for humans
=====================  ==========================================================================

Every file is written atomically (temporary name, then ``os.replace``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MVP4DError
from ..fsutil import atomic_path, write_json_atomic
from ..protocol import CameraSpec
from .fit import fit_flame, landmark_rig
from .image import as_rgb_uint8, default_reference_image, downscale_to, load_image, load_image_and_size, save_png_atomic
from .landmarks import FaceLandmarks, detect_faces, detect_landmarks
from .matting import matte_to_white
from .plausibility import check_face, check_fit
from .result import TrackResult, absorb_head_pose, head_transform

__all__ = [
    "TrackResult",
    "FaceLandmarks",
    "track_image",
    "track_from_params",
    "load_track",
    "write_track",
    "get_flame",
    "fit_flame",
    "landmark_rig",
    "absorb_head_pose",
    "head_transform",
    "load_image",
    "save_png_atomic",
    "default_reference_image",
    "detect_faces",
    "detect_landmarks",
    "matte_to_white",
    "TRACK_FILES",
]

#: file names of a track folder
TRACK_FILES = {
    "params": "flame_params.npz",
    "camera": "camera.json",
    "matted": "matted.png",
    "alpha": "alpha.png",
    "landmarks": "landmarks.json",
    "overlay": "overlay.png",
}


def get_flame(source: Any = "toy"):
    """A :class:`~backend.flame.lbs.Flame` from ``"toy"``, a FLAME file path, a FlameModel or a Flame."""
    from ..flame.io import load_flame
    from ..flame.lbs import Flame
    from ..flame.model import FlameModel

    if isinstance(source, Flame):
        return source
    if isinstance(source, FlameModel):
        return Flame(source)
    return Flame(load_flame(str(source)))


def track_image(
    image: str | os.PathLike | np.ndarray,
    flame_source: Any = "toy",
    out_dir: str | os.PathLike | None = None,
    warn: Callable[[str], None] | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    fit_options: dict[str, Any] | None = None,
    check: Callable[[], None] | None = None,
) -> TrackResult:
    """Track one reference image: load -> landmarks -> matting -> FLAME fit (-> track folder).

    Args:
        image: a file path or a uint8 (H, W, 3) RGB array.
        flame_source: ``"toy"``, a FLAME .pkl/.npz path, a FlameModel or a Flame.
        out_dir: when given, the track folder is written there (see the module docstring).
        warn: receives user-facing warnings (several faces, a poor fit).
        progress: ``progress(done, total)`` over the fit's stages.
        fit_options: extra keyword arguments for :func:`fit_flame`.
        check: cancel point (``CancelToken.check``), called between steps, between detector tiles
            and on every fit iteration, so a stop ends tracking within a fraction of a second.

    The photo is downscaled to ``image.WORK_MAX_SIDE`` first (the camera refers to that size).
    Raises ``BAD_INPUT`` (unreadable or too large image), ``NO_FACE`` (none found, too small, cut
    off, or not a human face: :func:`check_face`) and ``FLAME_INVALID`` (model without a landmark
    embedding); implausible fits are warned about (:func:`check_fit`).
    """
    tick = check or (lambda: None)
    t0 = time.perf_counter()
    img = load_image(image) if isinstance(image, (str, os.PathLike)) else downscale_to(as_rgb_uint8(image))
    tick()
    flame = get_flame(flame_source)
    face = detect_landmarks(img, warn=warn, check=check)
    face_info = check_face(img, face, warn=warn)
    tick()
    t_detect = time.perf_counter()
    matted, alpha = matte_to_white(img)
    tick()
    t_matte = time.perf_counter()
    h, w = img.shape[:2]
    result = fit_flame(flame, face, w, h, progress=progress, check=check, **(fit_options or {}))
    result.matted, result.alpha = matted, alpha
    result.info.update(face_info)
    result.info.update(
        seconds_load_detect=round(t_detect - t0, 3),
        seconds_matte=round(t_matte - t_detect, 3),
        seconds_fit=round(time.perf_counter() - t_matte, 3),
    )
    check_fit(result, warn=warn)
    if out_dir is not None:
        write_track(result, out_dir, image=img)
    return result


# ---------------------------------------------------------------------------------------------
# User-supplied parameters (no tracking)
# ---------------------------------------------------------------------------------------------


def _load_camera(camera: Any, where: str = "reference camera"):
    from ..cameras import Camera

    if isinstance(camera, Camera):
        return camera
    if isinstance(camera, CameraSpec):
        return Camera.from_spec(camera)
    if isinstance(camera, dict):
        return Camera.from_spec(CameraSpec.from_json(camera, where))
    p = Path(camera)
    if not p.is_file():
        raise MVP4DError("BAD_INPUT", f"{where} file {p} does not exist", "Pass the camera.json of the photo.")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MVP4DError("BAD_INPUT", f"{where} file {p} is not valid JSON ({e})") from e
    return Camera.from_spec(CameraSpec.from_json(d, p.name))


def track_from_params(
    params_npz: str | os.PathLike,
    camera_json: Any,
    image: str | os.PathLike | np.ndarray | None = None,
    flame_source: Any = "toy",
    out_dir: str | os.PathLike | None = None,
) -> TrackResult:
    """Use FLAME parameters and a camera the user supplies (the Blender rig): no tracking runs.

    Args:
        params_npz: one-frame ``FLAME_PARAM_KEYS`` file (shorter shape/expr vectors are zero-padded).
        camera_json: the photo's camera: a ``camera.json`` path, a CameraSpec, its JSON dict or a Camera.
        image: the reference photo; when given it is matted onto white (and written with ``out_dir``).
        flame_source: the head model the parameters belong to.
        out_dir: when given, the track folder is written there (no landmark files).

    A non-zero head pose (``global_rot``/``transl``) is moved into the camera, so the result is
    canonical like :func:`track_image`'s.
    """
    from ..flame.lbs import FlameParams

    flame = get_flame(flame_source)
    params = FlameParams.load_npz(params_npz, flame.num_shape, flame.num_expr)
    if params.num_frames != 1:
        raise MVP4DError(
            "BAD_INPUT",
            f"{Path(params_npz).name} holds {params.num_frames} frames; the reference pose needs one",
            "Export the FLAME parameters of the reference frame only.",
        )
    camera = _load_camera(camera_json)
    params, camera = absorb_head_pose(flame, params, camera)
    camera.name = "reference"
    result = TrackResult(params=params, camera=camera, model_id=flame.model_id, info={"source": "user parameters"})
    img = None
    if image is not None:
        if isinstance(image, (str, os.PathLike)):
            img, (full_w, full_h) = load_image_and_size(image)
        else:
            img = as_rgb_uint8(image)
            full_w, full_h = img.shape[1], img.shape[0]
            img = downscale_to(img)
        if (full_w, full_h) != (camera.width, camera.height):
            raise MVP4DError(
                "BAD_INPUT",
                f"the reference image is {full_w}x{full_h} but the camera is {camera.width}x{camera.height}",
                "Set the camera's resolution to the photo's size.",
            )
        if (img.shape[1], img.shape[0]) != (full_w, full_h):  # downscaled: the camera follows
            result.camera = camera = camera.scaled(img.shape[1], img.shape[0])
        result.matted, result.alpha = matte_to_white(img)
    if out_dir is not None:
        write_track(result, out_dir, image=img)
    return result


# ---------------------------------------------------------------------------------------------
# Track folder
# ---------------------------------------------------------------------------------------------


def _draw_overlay(image: np.ndarray, result: TrackResult) -> np.ndarray:
    import cv2

    out = np.ascontiguousarray(image.copy())
    size = result.face_box_size_px or max(image.shape[:2]) / 4
    r = max(1, int(round(size / 150)))
    for (u0, v0), (u1, v1) in zip(result.landmarks_px, result.projected_px):
        cv2.line(out, (int(round(u0)), int(round(v0))), (int(round(u1)), int(round(v1))), (255, 220, 0), 1, cv2.LINE_AA)
    for pts, colour in ((result.landmarks_px, (0, 200, 0)), (result.projected_px, (230, 0, 0))):
        for u, v in pts:
            cv2.circle(out, (int(round(u)), int(round(v))), r, colour, -1, cv2.LINE_AA)
    return out


def write_track(result: TrackResult, out_dir: str | os.PathLike, image: np.ndarray | None = None) -> dict[str, Path]:
    """Write ``result`` as a track folder (atomically, file by file); return name -> path written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    with atomic_path(out / TRACK_FILES["params"]) as tmp:
        result.params.save_npz(tmp, frame=0)
    written["params"] = out / TRACK_FILES["params"]
    write_json_atomic(out / TRACK_FILES["camera"], asdict(result.camera.to_spec()))
    written["camera"] = out / TRACK_FILES["camera"]
    if result.matted is not None:
        written["matted"] = save_png_atomic(out / TRACK_FILES["matted"], result.matted)
    if result.alpha is not None:
        a8 = np.clip(np.rint(np.asarray(result.alpha) * 255.0), 0, 255).astype(np.uint8)
        written["alpha"] = save_png_atomic(out / TRACK_FILES["alpha"], a8)
    if result.landmarks_px is not None and result.projected_px is not None:
        err = result.per_landmark_error_px
        doc = {
            "model_id": result.model_id,
            "landmark_ids": [int(i) for i in result.landmark_ids],
            "detected_px": np.round(result.landmarks_px, 4).tolist(),
            "projected_px": np.round(result.projected_px, 4).tolist(),
            "errors_px": np.round(err, 4).tolist(),
            "mean_error_px": result.mean_error_px,
            "max_error_px": float(err.max()) if len(err) else 0.0,
            "face_box_size_px": result.face_box_size_px,
            "relative_error": result.relative_error,
            "face": result.face.to_json() if result.face is not None else None,
            "info": {k: v for k, v in result.info.items() if isinstance(v, (int, float, str))},
        }
        write_json_atomic(out / TRACK_FILES["landmarks"], doc)
        written["landmarks"] = out / TRACK_FILES["landmarks"]
        if image is not None:
            written["overlay"] = save_png_atomic(out / TRACK_FILES["overlay"], _draw_overlay(image, result))
    return written


def load_track(out_dir: str | os.PathLike, flame_source: Any = None) -> TrackResult:
    """Read a track folder written by :func:`track_image`/:func:`track_from_params`.

    ``flame_source`` (optional) zero-pads the parameters to that model's sizes; without it they keep
    the sizes stored in the file. Landmark data and images are loaded when present.
    """
    from ..flame.lbs import FlameParams

    out = Path(out_dir)
    pfile = out / TRACK_FILES["params"]
    if not pfile.is_file():
        raise MVP4DError("BAD_INPUT", f"{out} holds no {TRACK_FILES['params']}", "Run the track stage first.")
    if flame_source is not None:
        flame = get_flame(flame_source)
        num_shape, num_expr, model_id = flame.num_shape, flame.num_expr, flame.model_id
    else:
        try:
            with np.load(pfile, allow_pickle=False) as npz:
                num_shape = int(npz["shape"].shape[-1]) if "shape" in npz.files else 0
                num_expr = int(npz["expr"].shape[-1]) if "expr" in npz.files else 0
        except Exception as e:  # noqa: BLE001 - load_npz below gives the precise message
            raise MVP4DError("BAD_INPUT", f"{pfile} is not a readable .npz ({type(e).__name__}: {e})") from e
        model_id = None
    params = FlameParams.load_npz(pfile, num_shape, num_expr)
    camera = _load_camera(out / TRACK_FILES["camera"], "camera.json")
    result = TrackResult(params=params, camera=camera, model_id=model_id)
    lfile = out / TRACK_FILES["landmarks"]
    if lfile.is_file():
        d = json.loads(lfile.read_text(encoding="utf-8"))
        result.landmark_ids = np.asarray(d["landmark_ids"], dtype=np.int64)
        result.landmarks_px = np.asarray(d["detected_px"], dtype=np.float64).reshape(-1, 2)
        result.projected_px = np.asarray(d["projected_px"], dtype=np.float64).reshape(-1, 2)
        result.mean_error_px = d.get("mean_error_px")
        result.face_box_size_px = d.get("face_box_size_px")
        result.relative_error = d.get("relative_error")
        result.face = FaceLandmarks.from_json(d["face"]) if d.get("face") else None
        result.model_id = result.model_id or d.get("model_id")
        result.info = dict(d.get("info") or {})
    if (out / TRACK_FILES["matted"]).is_file():
        result.matted = load_image(out / TRACK_FILES["matted"])
    if (out / TRACK_FILES["alpha"]).is_file():
        result.alpha = load_image(out / TRACK_FILES["alpha"])[..., 0].astype(np.float32) / 255.0
    return result
