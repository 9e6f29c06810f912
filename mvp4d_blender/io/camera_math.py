"""Blender <-> OpenCV cameras and the preset rings (no bpy, no torch): the backend's own definitions.

The conversion (``backend/cameras/blender.py``), the camera (``backend/cameras/camera.py``) and the
orbit placement are imported from the backend copy the add-on ships, through
:mod:`..backend_link` (those modules are torch-free), so there is one definition of the camera maths;
this module only adds what the add-on needs on top (custom rings, framing, spec dicts) and turns the
backend's ``BAD_INPUT`` errors into ``ValueError``.

Conventions (docs/architecture.md): FLAME world is metres, +y up, the face looks along +z;
Blender world is +z up and Blender (x, y, z) = FLAME (x, -z, y). OpenCV cameras look along +z
with +y down and put pixel centres at integer coordinates; Blender cameras look down -z with +y
up and measure pixels from the image edge.
"""

from __future__ import annotations

import dataclasses
import importlib

from .. import backend_link
from ..backend_link import protocol


def _backend_cameras():
    backend_link.protocol()  # loads the private backend package
    return importlib.import_module(f"{backend_link._PRIVATE}.cameras")


_cams = _backend_cameras()
FLAME_TO_BLENDER = _cams.FLAME_TO_BLENDER
BLENDER_TO_FLAME = _cams.BLENDER_TO_FLAME
SENSOR_FITS = _cams.SENSOR_FITS
#: the backend's ``Camera`` (K, world_to_cam, width, height, name, key; cam_to_world, project, ...)
OpenCVCamera = _cams.Camera
BlenderCamera = _cams.BlenderCamera


def _checked(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except backend_link.errors().MVP4DError as e:
        raise ValueError(e.message) from e


def opencv_from_blender(matrix_world, lens_mm: float, sensor_width_mm: float, sensor_height_mm: float,
                        sensor_fit: str, res_x: int, res_y: int, shift_x: float = 0.0, shift_y: float = 0.0,
                        pixel_aspect: float = 1.0, *, name: str = "camera", key: bool = False) -> OpenCVCamera:
    """A Blender perspective camera -> OpenCV camera in FLAME world (``backend.cameras.opencv_from_blender``)."""
    return _checked(_cams.opencv_from_blender, matrix_world, lens_mm, sensor_width_mm, sensor_height_mm, sensor_fit,
                    res_x, res_y, shift_x, shift_y, pixel_aspect, name=name, key=key)


def blender_from_opencv(camera: OpenCVCamera, sensor_width_mm: float = 36.0, sensor_height_mm: float = 24.0,
                        sensor_fit: str = "AUTO") -> BlenderCamera:
    """Inverse of :func:`opencv_from_blender` (``backend.cameras.blender_from_opencv``)."""
    return _checked(_cams.blender_from_opencv, camera, sensor_width_mm, sensor_height_mm, sensor_fit)


def to_spec_dict(camera: OpenCVCamera) -> dict:
    """The ``protocol.CameraSpec`` fields of a camera as plain JSON values."""
    return dataclasses.asdict(camera.to_spec())


def camera_from_spec(d: dict) -> OpenCVCamera:
    """A camera from ``protocol.CameraSpec`` JSON (a job's cameras.json entry, a bundle's camera_ring)."""
    return _checked(lambda: OpenCVCamera.from_spec(protocol().CameraSpec.from_json(d, "camera")))


# ---------------------------------------------------------------------------------------------
# Ring layouts (the backend's RING_LAYOUTS and orbit_camera; custom rings are the add-on's)
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


look_at = _cams.look_at
orbit_direction = _cams.orbit_direction


def orbit_camera(azimuth_deg: float, elevation_deg: float, *, center, distance: float, focal_px: float,
                 resolution: int, name: str = "camera", key: bool = False) -> OpenCVCamera:
    """A square camera at ``distance`` from ``center`` at (azimuth, elevation), looking at it (the backend's)."""
    return _checked(_cams.orbit_camera, azimuth_deg, elevation_deg, center=center, distance=distance,
                    focal_px=focal_px, resolution=resolution, name=name, key=key)


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
