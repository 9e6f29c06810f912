"""Blender <-> OpenCV camera conversion, written once here and mirrored by the add-on (pure numpy).

Blender world is +z up: Blender (x, y, z) = FLAME (x, -z, y). Blender cameras look down their local
-z with +y up and measure pixels from the image edge (pixel centres at +0.5); ours are OpenCV with
integer pixel centres (:mod:`backend.cameras.camera`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import bad_input
from .camera import Camera, _as_matrix, _normalize

# ---------------------------------------------------------------------------------------------
# Blender <-> OpenCV (pure numpy; the add-on mirrors this)
# ---------------------------------------------------------------------------------------------

#: Homogeneous FLAME -> Blender world: Blender (x, y, z) = FLAME (x, -z, y) (+90 degrees about x).
FLAME_TO_BLENDER = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
BLENDER_TO_FLAME = FLAME_TO_BLENDER.T.copy()
#: OpenCV camera axes (x right, y down, z forward) <-> Blender camera axes (x right, y up, -z forward).
_CV_TO_BL_CAM = np.diag([1.0, -1.0, -1.0, 1.0])

SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")


class BlenderCamera(NamedTuple):
    """Blender camera object/data settings equivalent to an OpenCV :class:`Camera`."""

    matrix_world: np.ndarray  # (4, 4) camera object's world matrix (Blender world, no scale)
    lens_mm: float
    shift_x: float
    shift_y: float
    sensor_width_mm: float
    sensor_height_mm: float
    sensor_fit: str
    res_x: int
    res_y: int
    pixel_aspect_x: float
    pixel_aspect_y: float


def _blender_fit(sensor_fit: str, res_x: int, res_y: int, pixel_aspect: float) -> tuple[str, float, float]:
    """Effective fit ('HORIZONTAL'|'VERTICAL'), view factor in x-pixel units, ycor = aspy/aspx.

    Mirrors Blender's ``BKE_camera_params_compute_viewplane``: AUTO fits the sensor to the larger
    of (aspx * res_x, aspy * res_y).
    """
    if sensor_fit not in SENSOR_FITS:
        raise bad_input(f"sensor_fit must be one of {', '.join(SENSOR_FITS)}, got {sensor_fit!r}")
    if pixel_aspect <= 0:
        raise bad_input(f"pixel_aspect must be positive, got {pixel_aspect}")
    ycor = 1.0 / pixel_aspect
    fit = sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if pixel_aspect * res_x >= res_y else "VERTICAL"
    viewfac = float(res_x) if fit == "HORIZONTAL" else ycor * res_y
    return fit, viewfac, ycor


def opencv_from_blender(
    matrix_world,
    lens_mm: float,
    sensor_width_mm: float,
    sensor_height_mm: float,
    sensor_fit: str,
    res_x: int,
    res_y: int,
    shift_x: float = 0.0,
    shift_y: float = 0.0,
    pixel_aspect: float = 1.0,
    *,
    name: str = "camera",
    key: bool = False,
) -> Camera:
    """A Blender perspective camera -> OpenCV :class:`Camera` in FLAME world.

    ``matrix_world`` is the camera object's world matrix (scale is ignored); ``res_x``/``res_y``
    the effective render size (resolution percentage applied); ``pixel_aspect`` =
    pixel_aspect_x / pixel_aspect_y. AUTO uses ``sensor_width_mm`` along the larger image side,
    VERTICAL uses ``sensor_height_mm`` along the height (Blender's rules). Blender's principal point
    is the image centre moved by the shift (in units of the fitted image side); converting its
    edge-based pixel coordinates to integer pixel centres subtracts half a pixel.
    """
    M = _as_matrix(matrix_world, (4, 4), "matrix_world")
    if lens_mm <= 0 or sensor_width_mm <= 0 or sensor_height_mm <= 0:
        raise bad_input("lens and sensor sizes must be positive")
    fit, viewfac, ycor = _blender_fit(sensor_fit, int(res_x), int(res_y), float(pixel_aspect))
    sensor = sensor_height_mm if sensor_fit == "VERTICAL" else sensor_width_mm
    fx = lens_mm * viewfac / sensor
    fy = fx / ycor
    cx = res_x / 2.0 - shift_x * viewfac - 0.5
    cy = res_y / 2.0 + shift_y * viewfac / ycor - 0.5
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    M = M.copy()
    M[:3, :3] = _normalize(M[:3, :3], axis=0)  # drop object scale
    cam_to_world = BLENDER_TO_FLAME @ M @ _CV_TO_BL_CAM
    R = cam_to_world[:3, :3]
    w2c = np.eye(4)
    w2c[:3, :3] = R.T
    w2c[:3, 3] = -R.T @ cam_to_world[:3, 3]
    return Camera(K=K, world_to_cam=w2c, width=int(res_x), height=int(res_y), name=name, key=key)


def blender_from_opencv(
    camera: Camera,
    sensor_width_mm: float = 36.0,
    sensor_height_mm: float = 24.0,
    sensor_fit: str = "AUTO",
) -> BlenderCamera:
    """An OpenCV :class:`Camera` (FLAME world) -> Blender camera settings (inverse of
    :func:`opencv_from_blender`). fy != fx becomes a pixel aspect (the larger of the two Blender
    aspect values is > 1, the other 1); skew cannot be represented and is dropped."""
    ratio = camera.fy / camera.fx  # = pixel_aspect_x / pixel_aspect_y
    fit, viewfac, ycor = _blender_fit(sensor_fit, camera.width, camera.height, ratio)
    sensor = sensor_height_mm if sensor_fit == "VERTICAL" else sensor_width_mm
    lens = camera.fx * sensor / viewfac
    shift_x = (camera.width / 2.0 - 0.5 - camera.cx) / viewfac
    shift_y = (camera.cy - camera.height / 2.0 + 0.5) * ycor / viewfac
    M = FLAME_TO_BLENDER @ camera.cam_to_world @ _CV_TO_BL_CAM
    asp_x, asp_y = (ratio, 1.0) if ratio >= 1.0 else (1.0, 1.0 / ratio)
    return BlenderCamera(matrix_world=M, lens_mm=float(lens), shift_x=float(shift_x), shift_y=float(shift_y),
                         sensor_width_mm=float(sensor_width_mm), sensor_height_mm=float(sensor_height_mm),
                         sensor_fit=sensor_fit, res_x=camera.width, res_y=camera.height,
                         pixel_aspect_x=float(asp_x), pixel_aspect_y=float(asp_y))

