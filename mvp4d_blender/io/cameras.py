"""Blender <-> OpenCV cameras and the preset rings, in pure numpy (no bpy, no torch).

This is the add-on's mirror of ``backend/cameras/blender.py`` (the conversion) and of
``backend/cameras/camera.py`` (``orbit_camera``; the ring layouts themselves come from ``backend.protocol``). The backend
modules import torch, which Blender's Python never does, so the maths is repeated here and
``tests/blender/test_cameras.py`` checks both sides give the same numbers.

Conventions (docs/architecture.md): FLAME world is metres, +y up, the face looks along +z;
Blender world is +z up and Blender (x, y, z) = FLAME (x, -z, y). OpenCV cameras look along +z
with +y down and put pixel centres at integer coordinates; Blender cameras look down -z with +y
up and measure pixels from the image edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..backend_link import protocol

FLAME_TO_BLENDER = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
BLENDER_TO_FLAME = FLAME_TO_BLENDER.T.copy()
_CV_TO_BL_CAM = np.diag([1.0, -1.0, -1.0, 1.0])
SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")


@dataclass
class OpenCVCamera:
    """An OpenCV pinhole camera in FLAME world; serialises to ``protocol.CameraSpec`` JSON."""

    K: np.ndarray  # (3, 3)
    world_to_cam: np.ndarray  # (4, 4)
    width: int
    height: int
    name: str = "camera"
    key: bool = False

    @property
    def cam_to_world(self) -> np.ndarray:
        R, t = self.world_to_cam[:3, :3], self.world_to_cam[:3, 3]
        m = np.eye(4)
        m[:3, :3] = R.T
        m[:3, 3] = -R.T @ t
        return m

    def to_spec_dict(self) -> dict:
        """The ``protocol.CameraSpec`` fields as plain JSON values."""
        return {
            "name": self.name, "width": int(self.width), "height": int(self.height),
            "fx": float(self.K[0, 0]), "fy": float(self.K[1, 1]), "cx": float(self.K[0, 2]),
            "cy": float(self.K[1, 2]), "world_to_cam": [[float(x) for x in row] for row in self.world_to_cam],
            "key": bool(self.key),
        }

    @classmethod
    def from_spec_dict(cls, d: dict) -> "OpenCVCamera":
        K = np.array([[d["fx"], 0.0, d["cx"]], [0.0, d["fy"], d["cy"]], [0.0, 0.0, 1.0]], dtype=np.float64)
        return cls(K=K, world_to_cam=np.asarray(d["world_to_cam"], dtype=np.float64), width=int(d["width"]),
                   height=int(d["height"]), name=str(d.get("name", "camera")), key=bool(d.get("key", False)))


class BlenderCamera(NamedTuple):
    """Blender camera object/data settings equivalent to an :class:`OpenCVCamera`."""

    matrix_world: np.ndarray
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


def _normalize_columns(m: np.ndarray) -> np.ndarray:
    return m / np.maximum(np.linalg.norm(m, axis=0, keepdims=True), 1e-300)


def _blender_fit(sensor_fit: str, res_x: int, res_y: int, pixel_aspect: float) -> tuple[str, float, float]:
    """Effective fit, view factor (x-pixel units) and ycor, as Blender's viewplane code computes them."""
    if sensor_fit not in SENSOR_FITS:
        raise ValueError(f"sensor_fit must be one of {', '.join(SENSOR_FITS)}, got {sensor_fit!r}")
    if pixel_aspect <= 0:
        raise ValueError(f"pixel_aspect must be positive, got {pixel_aspect}")
    ycor = 1.0 / pixel_aspect
    fit = sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if pixel_aspect * res_x >= res_y else "VERTICAL"
    viewfac = float(res_x) if fit == "HORIZONTAL" else ycor * res_y
    return fit, viewfac, ycor


def opencv_from_blender(
    matrix_world, lens_mm: float, sensor_width_mm: float, sensor_height_mm: float, sensor_fit: str,
    res_x: int, res_y: int, shift_x: float = 0.0, shift_y: float = 0.0, pixel_aspect: float = 1.0,
    *, name: str = "camera", key: bool = False,
) -> OpenCVCamera:
    """A Blender perspective camera -> OpenCV camera in FLAME world (mirror of the backend's)."""
    M = np.array(matrix_world, dtype=np.float64).reshape(4, 4)
    if lens_mm <= 0 or sensor_width_mm <= 0 or sensor_height_mm <= 0:
        raise ValueError("lens and sensor sizes must be positive")
    _fit, viewfac, ycor = _blender_fit(sensor_fit, int(res_x), int(res_y), float(pixel_aspect))
    sensor = sensor_height_mm if sensor_fit == "VERTICAL" else sensor_width_mm
    fx = lens_mm * viewfac / sensor
    fy = fx / ycor
    cx = res_x / 2.0 - shift_x * viewfac - 0.5
    cy = res_y / 2.0 + shift_y * viewfac / ycor - 0.5
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    M[:3, :3] = _normalize_columns(M[:3, :3])
    cam_to_world = BLENDER_TO_FLAME @ M @ _CV_TO_BL_CAM
    R = cam_to_world[:3, :3]
    w2c = np.eye(4)
    w2c[:3, :3] = R.T
    w2c[:3, 3] = -R.T @ cam_to_world[:3, 3]
    return OpenCVCamera(K=K, world_to_cam=w2c, width=int(res_x), height=int(res_y), name=name, key=key)


def blender_from_opencv(camera: OpenCVCamera, sensor_width_mm: float = 36.0, sensor_height_mm: float = 24.0,
                        sensor_fit: str = "AUTO") -> BlenderCamera:
    """Inverse of :func:`opencv_from_blender` (skew is dropped; fy != fx becomes a pixel aspect)."""
    fx, fy, cx, cy = camera.K[0, 0], camera.K[1, 1], camera.K[0, 2], camera.K[1, 2]
    ratio = fy / fx
    _fit, viewfac, ycor = _blender_fit(sensor_fit, camera.width, camera.height, ratio)
    sensor = sensor_height_mm if sensor_fit == "VERTICAL" else sensor_width_mm
    lens = fx * sensor / viewfac
    shift_x = (camera.width / 2.0 - 0.5 - cx) / viewfac
    shift_y = (cy - camera.height / 2.0 + 0.5) * ycor / viewfac
    M = FLAME_TO_BLENDER @ camera.cam_to_world @ _CV_TO_BL_CAM
    asp_x, asp_y = (ratio, 1.0) if ratio >= 1.0 else (1.0, 1.0 / ratio)
    return BlenderCamera(M, float(lens), float(shift_x), float(shift_y), float(sensor_width_mm),
                         float(sensor_height_mm), sensor_fit, int(camera.width), int(camera.height),
                         float(asp_x), float(asp_y))


# ---------------------------------------------------------------------------------------------
# Ring layouts (mirror of backend/cameras/rings.py: RING_LAYOUTS and orbit_camera)
# ---------------------------------------------------------------------------------------------


#: (key views, other views) as (azimuth, elevation) degrees per preset: the backend's contract table.
RING_LAYOUTS = protocol().RING_LAYOUTS


def custom_layout(count: int, azimuth_range: float, elevation: float, key_every: int = 4,
                  ) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """An even ring of ``count`` views over ``azimuth_range`` degrees at one elevation.

    A full 360 degree ring does not repeat its first view; every ``key_every``-th view is a key view.
    """
    count = max(1, int(count))
    if azimuth_range >= 360.0 - 1e-6:
        az = [-180.0 + 360.0 * i / count for i in range(count)]
    elif count == 1:
        az = [0.0]
    else:
        az = [-azimuth_range / 2 + azimuth_range * i / (count - 1) for i in range(count)]
    keys = [(a, float(elevation)) for i, a in enumerate(az) if i % max(1, key_every) == 0]
    others = [(a, float(elevation)) for i, a in enumerate(az) if i % max(1, key_every) != 0]
    return keys, others


def orbit_direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])


def _orbit_up(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([-math.sin(e) * math.sin(a), math.cos(e), -math.sin(e) * math.cos(a)])


def look_at(eye, target, up) -> np.ndarray:
    """(4, 4) OpenCV world->camera for a camera at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(v, dtype=np.float64).reshape(3) for v in (eye, target, up))
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, :3] = np.stack([x, y, z])
    m[:3, 3] = -m[:3, :3] @ eye
    return m


def orbit_camera(azimuth_deg: float, elevation_deg: float, *, center, distance: float, focal_px: float,
                 resolution: int, name: str = "camera", key: bool = False) -> OpenCVCamera:
    """A square camera at ``distance`` from ``center`` at (azimuth, elevation), looking at it."""
    c = np.asarray(center, dtype=np.float64).reshape(3)
    eye = c + distance * orbit_direction(azimuth_deg, elevation_deg)
    w2c = look_at(eye, c, _orbit_up(azimuth_deg, elevation_deg))
    r = int(resolution)
    K = np.array([[focal_px, 0.0, (r - 1) / 2.0], [0.0, focal_px, (r - 1) / 2.0], [0.0, 0.0, 1.0]])
    return OpenCVCamera(K=K, world_to_cam=w2c, width=r, height=r, name=name, key=key)


def ring_cameras(layout: tuple[list, list], *, center, distance: float, focal_px: float,
                 resolution: int) -> list[OpenCVCamera]:
    """Cameras of a layout: key views first (``key00``...), then the others (``view00``...)."""
    keys, others = layout
    cams = []
    for is_key, views in ((True, keys), (False, others)):
        for i, (az, el) in enumerate(views):
            name = f"key{i:02d}" if is_key else f"view{i:02d}"
            cams.append(orbit_camera(az, el, center=center, distance=distance, focal_px=focal_px,
                                     resolution=resolution, name=name, key=is_key))
    return cams


#: the backend frames preset rings so the head spans 1 / CROP_SCALE of the image (protocol.py)
CROP_SCALE = protocol().CROP_SCALE


def ring_framing(extent: float, distance: float, resolution: int) -> float:
    """Focal length in pixels framing a head of ``extent`` metres at ``distance`` like the backend."""
    return resolution * distance / (CROP_SCALE * extent)
