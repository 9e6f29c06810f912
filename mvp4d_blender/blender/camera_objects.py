"""Camera rings as real Blender cameras, and reading any camera back as an OpenCV camera in FLAME space.

Placement and read-back both go through ``io/camera_math.py`` (the backend's own camera conversion,
imported torch-free). Cameras are expressed relative to the rig's armature object, so moving the whole rig in
the scene does not change what the backend sees. Key views sit in a child collection "Key views",
are drawn larger and carry ``mvp4d_key``; whatever the artist does to a camera afterwards (move,
re-aim, change the lens) is read back as it is.
"""

from __future__ import annotations

import re

import bpy
import numpy as np
from mathutils import Matrix

from ..io.camera_math import (RING_LAYOUTS, OpenCVCamera, blender_from_opencv, camera_from_spec, custom_layout,
                          opencv_from_blender, to_spec_dict,
                          ring_cameras, ring_framing)
from .. import backend_link
from . import rig as rigmod

RING_COLLECTION = "MVP4D Cameras"
KEY_COLLECTION = "Key views"
KEY_PROP = "mvp4d_key"


class CameraError(ValueError):
    """A camera collection the backend cannot use; the message says which camera and why."""


def rig_frame(rig) -> np.ndarray:
    """World matrix of the frame cameras are expressed in (the rig's armature, else the rig)."""
    if rig is None:
        return np.eye(4)
    owner = rigmod.armature_of(rig) or rig
    return np.array(owner.matrix_world, dtype=np.float64)


def apply_opencv(cam_obj, cam: OpenCVCamera, frame: np.ndarray) -> None:
    """Set a Blender camera object from an OpenCV camera (FLAME space of ``frame``)."""
    bc = blender_from_opencv(cam)
    data = cam_obj.data
    data.type = "PERSP"
    data.sensor_fit, data.sensor_width, data.sensor_height = bc.sensor_fit, bc.sensor_width_mm, bc.sensor_height_mm
    data.lens, data.shift_x, data.shift_y = bc.lens_mm, bc.shift_x, bc.shift_y
    cam_obj.matrix_world = Matrix((frame @ bc.matrix_world).tolist())
    cam_obj["mvp4d_width"], cam_obj["mvp4d_height"] = int(cam.width), int(cam.height)


def read_camera(cam_obj, frame: np.ndarray, width: int, height: int, name: str | None = None,
                key: bool | None = None) -> OpenCVCamera:
    """A Blender camera object -> OpenCV camera in FLAME space, for a ``width`` x ``height`` image."""
    data = cam_obj.data
    if data.type != "PERSP":
        raise CameraError(f"camera '{cam_obj.name}' is {data.type.lower()}; the backend needs perspective cameras")
    rel = np.linalg.inv(frame) @ np.array(cam_obj.matrix_world, dtype=np.float64)
    return opencv_from_blender(rel, data.lens, data.sensor_width, data.sensor_height, data.sensor_fit, width, height,
                               data.shift_x, data.shift_y, 1.0, name=name or cam_obj.name,
                               key=bool(cam_obj.get(KEY_PROP, False)) if key is None else key)


def _safe_name(name: str) -> str:
    """A view-folder name the backend accepts (``backend.jobpaths``: no '.'/'..', hidden or device names)."""
    return backend_link.protocol().safe_name(re.sub(r"[^A-Za-z0-9_.-]+", "_", name))


def collection_cameras(collection) -> list:
    """Camera objects of a collection and its children, sorted by name (the view order)."""
    return sorted((o for o in collection.all_objects if o.type == "CAMERA"), key=lambda o: o.name)


def read_ring(collection, rig, resolution: int) -> list[dict]:
    """``protocol.CameraSpec`` dicts of every camera in ``collection`` (square images of ``resolution``)."""
    cams = collection_cameras(collection)
    if not cams:
        raise CameraError(f"the camera collection '{collection.name}' holds no cameras; add a camera ring "
                          "or pick another collection")
    frame = rig_frame(rig)
    specs, seen = [], set()
    for obj in cams:
        name = _safe_name(obj.name)
        while name.casefold() in seen:  # "Cam" and "cam" would share a folder on macOS and Windows
            name += "_"
        seen.add(name.casefold())
        specs.append(to_spec_dict(read_camera(obj, frame, resolution, resolution, name=name)))
    return specs


def _clear_collection(coll) -> None:
    for child in list(coll.children):
        _clear_collection(child)
        bpy.data.collections.remove(child)
    for obj in list(coll.objects):
        data = obj.data
        bpy.data.objects.remove(obj)
        if data is not None and data.users == 0:
            bpy.data.cameras.remove(data)


def add_ring(context, rig, *, preset: str, resolution: int, distance: float, count: int = 8,
             azimuth_range: float = 120.0, elevation: float = 0.0, model=None, collection=None):
    """Create (or replace the content of) the ring collection around the rig's head."""
    if preset == "custom":
        layout = custom_layout(count, azimuth_range, elevation)
    elif preset in RING_LAYOUTS:
        layout = RING_LAYOUTS[preset]
    else:
        raise CameraError(f"unknown ring preset {preset!r}")
    shape = np.asarray(rig.get("mvp4d_shape", [])) if rig is not None else None
    if model is not None:
        center, extent = model.head_bounds(shape)
    else:
        basis = rigmod.rest_vertices_flame(rig)
        center, extent = (basis.min(0) + basis.max(0)) / 2, float((basis.max(0) - basis.min(0)).max())
    cams = ring_cameras(layout, center=center, distance=distance, focal_px=ring_framing(extent, distance, resolution),
                        resolution=resolution)
    coll = collection or bpy.data.collections.get(RING_COLLECTION)
    if coll is None:
        coll = bpy.data.collections.new(RING_COLLECTION)
        context.scene.collection.children.link(coll)
    _clear_collection(coll)
    keys = bpy.data.collections.new(KEY_COLLECTION)
    coll.children.link(keys)
    frame = rig_frame(rig)
    for cam in cams:
        data = bpy.data.cameras.new(cam.name)
        obj = bpy.data.objects.new(cam.name, data)
        (keys if cam.key else coll).objects.link(obj)
        apply_opencv(obj, cam, frame)
        data.display_size = 0.06 if cam.key else 0.03
        data.show_name = cam.key
        obj[KEY_PROP] = bool(cam.key)
        obj.color = (1.0, 0.55, 0.1, 1.0) if cam.key else (0.6, 0.6, 0.6, 1.0)
    coll["mvp4d_ring"] = preset
    return coll


def reference_camera_from_json(context, rig, spec: dict, name: str = "MVP4D Reference"):
    """Create or update the camera of the reference photo (from the tracker's camera.json)."""
    cam = camera_from_spec(spec)
    obj = bpy.data.objects.get(name)
    if obj is None or obj.type != "CAMERA":
        obj = bpy.data.objects.new(name, bpy.data.cameras.new(name))
        coll = rig.users_collection[0] if rig is not None and rig.users_collection else context.scene.collection
        coll.objects.link(obj)
    apply_opencv(obj, cam, rig_frame(rig))
    obj.data.display_size = 0.08
    return obj
