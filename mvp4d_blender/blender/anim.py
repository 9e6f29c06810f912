"""Bulk keyframes: write and evaluate whole F-curves without a Python call per key.

Blender 4.4+ stores F-curves in slotted actions (``action -> layer -> strip -> channelbag``); the
channelbag of an ID's assigned slot is found with ``bpy_extras.anim_utils``. The first key of a
channel is made with ``keyframe_insert`` (which creates the action, slot and channelbag the way the UI
does); all keys are then written at once with ``keyframe_points.foreach_set``.
"""

from __future__ import annotations

import bpy  # noqa: F401 - bpy must be loaded before bpy_extras
import numpy as np


def _channelbag(id_data):
    ad = id_data.animation_data
    if ad is None or ad.action is None:
        return None
    try:
        from bpy_extras.anim_utils import action_get_channelbag_for_slot

        return action_get_channelbag_for_slot(ad.action, ad.action_slot)
    except (ImportError, AttributeError):  # Blender < 4.4: legacy actions
        return ad.action


def find_fcurve(id_data, data_path: str, index: int):
    bag = _channelbag(id_data)
    return None if bag is None else bag.fcurves.find(data_path, index=index)


def set_channel(id_data, data_path: str, index: int, frames: np.ndarray, values: np.ndarray,
                group: str | None = None) -> None:
    """Key ``values`` at ``frames`` (replacing keys of this channel inside that frame range)."""
    frames = np.asarray(frames, np.float64)
    values = np.asarray(values, np.float64)
    fc = find_fcurve(id_data, data_path, index)
    if fc is None:
        try:
            id_data.keyframe_insert(data_path, index=index, frame=float(frames[0]), group=group or "")
        except TypeError:  # a scalar property: keyframe_insert wants index -1, its F-curve has index 0
            id_data.keyframe_insert(data_path, index=-1, frame=float(frames[0]), group=group or "")
        fc = find_fcurve(id_data, data_path, index)
    kp = fc.keyframe_points
    old = np.empty(2 * len(kp), np.float32)
    kp.foreach_get("co", old)
    old = old.reshape(-1, 2)
    keep = old[(old[:, 0] < frames.min() - 0.5) | (old[:, 0] > frames.max() + 0.5)]
    co = np.concatenate([keep, np.stack([frames, values], 1)]).astype(np.float32)
    co = co[np.argsort(co[:, 0], kind="stable")]
    kp.clear()
    kp.add(len(co))
    kp.foreach_set("co", co.ravel())
    interp = np.full(len(co), bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["LINEAR"].value,
                     np.int32)
    kp.foreach_set("interpolation", interp)
    fc.update()


def evaluate(id_data, data_path: str, index: int, frames: np.ndarray, default: float) -> np.ndarray:
    """The channel's value at each frame (``default`` everywhere when it has no F-curve)."""
    fc = find_fcurve(id_data, data_path, index)
    if fc is None or len(fc.keyframe_points) == 0:
        return np.full(len(frames), float(default))
    return np.array([fc.evaluate(float(f)) for f in frames], np.float64)


