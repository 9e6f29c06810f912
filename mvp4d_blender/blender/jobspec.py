"""Gather and check Generate's inputs from the scene (or operator arguments) into a job spec.

Every check happens here, before a job folder or a process exists, and fails with
:class:`InputError` (message + hint) that the operator reports and the panel shows. The spec is then
validated once more by ``backend.protocol.JobSpec`` in ``io/jobs.write_job``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import bpy
import numpy as np

from .. import backend_link
from ..io.camera_math import to_spec_dict
from . import camera_objects as camops, rig_params
from . import common, rig as rigmod


class InputError(ValueError):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


def resolve_image(image_path: str, scene) -> Path:
    """A readable image file for the reference (packed images are written to a temporary file)."""
    if image_path:
        path = Path(bpy.path.abspath(image_path))
    else:
        img = scene.mvp4d.image
        if img is None:
            raise InputError("no reference image", "Pick a portrait photo in the Reference panel.")
        if img.packed_file is not None:
            path = Path(tempfile.mkdtemp(prefix="mvp4d_")) / (Path(img.filepath).name or "reference.png")
            path.write_bytes(img.packed_file.data)
        else:
            path = Path(bpy.path.abspath(img.filepath))
    if not path.is_file():
        raise InputError(f"the reference image {path} does not exist", "Pick an existing image file.")
    check_image_readable(path)
    return path


def check_image_readable(path: Path) -> tuple[int, int]:
    """Load the file with Blender's image reader; :class:`InputError` if it is not an image."""
    before = set(bpy.data.images)
    try:
        img = bpy.data.images.load(str(path), check_existing=True)
    except RuntimeError as e:
        raise InputError(f"cannot read the reference image {path.name} ({e})",
                         "Use a PNG or JPEG photo.") from e
    try:
        w, h = img.size
        if w == 0 or h == 0 or not img.has_data:
            raise InputError(f"cannot read the reference image {path.name}: not a supported image",
                             "Use a PNG or JPEG photo.")
        return int(w), int(h)
    finally:
        if img not in before and img.users == 0:
            bpy.data.images.remove(img)


def resolve_rig(rig_name: str, scene):
    rig = bpy.data.objects.get(rig_name) if rig_name else scene.mvp4d.rig
    if rig_name and rig is None:
        raise InputError(f"there is no object named '{rig_name}'", "Pass the name of the FLAME rig's head mesh.")
    if rig is None:
        raise InputError("no FLAME rig", "Add one in the FLAME rig panel (Add FLAME rig) or pick an existing rig.")
    if not rigmod.is_rig(rig):
        raise InputError(f"'{rig.name}' is not a FLAME rig", "Pick the head mesh made by Add FLAME rig.")
    return rig


def resolve_cameras(coll_name: str, scene):
    """The camera collection (None: the preset's own ring)."""
    if coll_name:
        coll = bpy.data.collections.get(coll_name)
        if coll is None:
            raise InputError(f"there is no collection named '{coll_name}'", "Pass the camera ring's collection.")
        return coll
    return scene.mvp4d.cameras


def reference_inputs(rig):
    """``(flame_params, reference_camera)`` of a fitted rig, else ``(None, None)``."""
    if not rig.get("mvp4d_fitted"):
        return None, None
    cam_obj = rig.get("mvp4d_reference_camera")
    ref = json.loads(rig.get("mvp4d_reference", "{}"))
    if cam_obj is None or not ref:
        return None, None
    params = {k: np.asarray(v, np.float32) for k, v in ref.items()}
    params["shape"] = np.asarray(rig.get("mvp4d_shape", [0.0]), np.float32)
    frame = camops.rig_frame(rig)
    cam = camops.read_camera(cam_obj, frame, int(cam_obj.get("mvp4d_width", 512)), int(cam_obj.get("mvp4d_height", 512)),
                             name="reference", key=False)
    return params, to_spec_dict(cam)


def nearest_valid_frames(n: int) -> int:
    """The frame count closest to ``n`` that a job accepts (1 + 4k, the video model's frame grouping);
    ties go to the longer one, so no keyed frame is dropped."""
    return max(1, 4 * int(np.floor((max(1, n) - 1) / 4 + 0.5)) + 1)


def length_warning(frame_start: int, frame_end: int) -> str | None:
    """What the artist is told when the rig's frame range is sent at another length (None: unchanged)."""
    n = frame_end - frame_start + 1
    m = nearest_valid_frames(n)
    if m == n:
        return None
    def frames(a: int, b: int) -> str:
        return f"frame {a} is" if a == b else f"frames {a}-{b} are"

    how = (f"{frames(frame_start + m, frame_end)} left out" if m < n
           else f"{frames(frame_end + 1, frame_start + m - 1)} read from the rig (its last pose holds)")
    return (f"the rig's {n} frames ({frame_start}-{frame_end}) were sent as {m}: a job's length is 1 + 4k "
            f"frames; {how}")


def build_spec(scene, rig, collection, *, generator: str, preset: str, seed: int, animation: str,
               frame_start: int, frame_end: int) -> tuple[dict, dict | None, dict | None]:
    """``(job.json dict without input paths, animation arrays or None, flame_params or None)``."""
    proto = backend_link.protocol()
    if preset not in proto.PRESETS:
        raise InputError(f"unknown quality preset {preset!r}", f"Use one of {', '.join(proto.PRESETS)}.")
    if generator not in proto.GENERATORS:
        raise InputError(f"unknown generator {generator!r}", f"Use one of {', '.join(proto.GENERATORS)}.")
    p = common.prefs()
    from .prefs import generator_weights

    weights = generator_weights(p, generator)
    if generator == "mmvdm" and not weights:
        raise InputError("the MMVDM generator needs its weights folder",
                         "Set MMVDM weights in the preferences, or use the Projection generator.")
    if generator == "cap4d" and not weights:
        raise InputError("the CAP4D generator needs its weights",
                         "Convert cap4d_mmdm_100k.ckpt with 'python -m backend weights convert' and set CAP4D "
                         "weights in the preferences.")
    if generator == "cap4d" and rig.get("mvp4d_flame_source", "toy") == "toy":
        raise InputError("the CAP4D generator needs the real FLAME model, not the toy head",
                         proto.ERROR_CODES["FLAME_REQUIRED"])
    cams = None
    if collection is not None:
        try:
            cams = camops.read_ring(collection, rig, proto.PRESETS[preset].resolution)
        except camops.CameraError as e:
            raise InputError(str(e), "Add a camera ring in the Camera ring panel.") from e
    anim_arrays = None
    if animation == "RIG":
        if frame_end < frame_start:
            raise InputError(f"the frame range {frame_start}..{frame_end} is empty", "Set End >= Start.")
        # the job's length must be 1 + 4k: the nearest such length, the rig's own frames read for it
        # (never the preset's length, which silently cut or held the artist's animation)
        n = nearest_valid_frames(frame_end - frame_start + 1)
        seq = rig_params.read_sequence(rig, np.arange(frame_start, frame_start + n, dtype=np.float64))
        anim_arrays = {k: v for k, v in seq.items() if k in proto.ANIMATION_KEYS}
    flame_params, ref_cam = reference_inputs(rig)
    spec = {
        "inputs": {"flame_model": rig.get("mvp4d_flame_source", "toy")},
        "cameras": {"preset": preset, "cameras": cams},
        "generator": {"name": generator, "weights": weights if generator in ("mmvdm", "cap4d") else None,
                      "seed": int(seed),
                      # the preferences' memory preset and device travel in the spec, not the environment
                      "vram": {"LOW": "low", "MEDIUM": "medium", "HIGH": "high"}[p.vram_preset] if p else None,
                      "device": None if p is None or p.device == "AUTO" else p.device.lower()},
        "animation": {"fps": float(scene.render.fps) / float(scene.render.fps_base or 1.0)},
    }
    if anim_arrays is not None:
        spec["animation"]["num_frames"] = int(anim_arrays["expr"].shape[0])
    if ref_cam is not None:
        spec["inputs"]["reference_camera"] = ref_cam
    return spec, anim_arrays, flame_params
