"""Cameras: OpenCV conventions, camera rings of the paper, Blender <-> OpenCV conversion.

One definition of each (docs/architecture.md): :mod:`.camera` (the ``Camera`` and its conventions),
:mod:`.rings` (presets, key views, clusters), :mod:`.blender` (what the add-on mirrors).
"""

from .blender import BLENDER_TO_FLAME, FLAME_TO_BLENDER, SENSOR_FITS, BlenderCamera, blender_from_opencv, opencv_from_blender
from .camera import Camera, intrinsics, look_at, orbit_camera, orbit_direction, stack_K, stack_world_to_cam
from .rings import (
    RING_LAYOUTS,
    CameraRing,
    closest_reference_angle,
    cluster_views,
    farthest_point_keys,
    ring_preset,
    view_angle,
)

__all__ = [
    "Camera",
    "CameraRing",
    "BlenderCamera",
    "FLAME_TO_BLENDER",
    "BLENDER_TO_FLAME",
    "SENSOR_FITS",
    "RING_LAYOUTS",
    "intrinsics",
    "look_at",
    "orbit_camera",
    "orbit_direction",
    "ring_preset",
    "stack_K",
    "stack_world_to_cam",
    "view_angle",
    "closest_reference_angle",
    "farthest_point_keys",
    "cluster_views",
    "opencv_from_blender",
    "blender_from_opencv",
]
