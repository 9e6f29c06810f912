"""The rig's state as FLAME parameters: set one frame, read it back, key and read whole sequences.

FLAME parameter names map to the rig like this: ``expr`` -> the expression shape keys (in
``mvp4d_expr_names`` order); ``global_rot``/``neck_pose``/``jaw_pose`` -> the local quaternion of the
bones ``root``/``neck``/``jaw``; ``eye_pose`` -> ``eye_left`` then ``eye_right``; ``transl`` -> the
``root`` bone's location. Axis-angle <-> quaternion conversions are in ``io/binding.py``.
"""

from __future__ import annotations

import numpy as np

from ..io.binding import axis_angle_to_quat, quat_to_axis_angle
from . import anim
from .rig import EXPR_RANGE, armature_of, expression_names


POSE_BONES = {"global_rot": "root", "neck_pose": "neck", "jaw_pose": "jaw"}


def set_parameters(rig, params: dict[str, np.ndarray]) -> None:
    """Set the current (unkeyed) state from one frame of FLAME parameters (missing keys: unchanged)."""
    keys = rig.data.shape_keys.key_blocks
    if "expr" in params:
        expr = np.asarray(params["expr"], np.float64).reshape(-1)
        for i, nm in enumerate(expression_names(rig)):
            keys[nm].value = float(np.clip(expr[i], -EXPR_RANGE, EXPR_RANGE)) if i < len(expr) else 0.0
    arm = armature_of(rig)
    if arm is None:
        return
    for key, q in _pose_quaternions(params).items():
        if key in arm.pose.bones:
            arm.pose.bones[key].rotation_quaternion = [float(x) for x in q]
    if "transl" in params and "root" in arm.pose.bones:
        arm.pose.bones["root"].location = [float(x) for x in np.reshape(params["transl"], 3)]


def _pose_quaternions(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, bone in POSE_BONES.items():
        if key in params:
            out[bone] = axis_angle_to_quat(np.reshape(params[key], 3))
    if "eye_pose" in params:
        e = np.reshape(params["eye_pose"], 6)
        out["eye_left"], out["eye_right"] = axis_angle_to_quat(e[:3]), axis_angle_to_quat(e[3:])
    return out


def get_parameters(rig) -> dict[str, np.ndarray]:
    """The rig's current (evaluated at this frame) state as one frame of FLAME parameters."""
    keys = rig.data.shape_keys.key_blocks
    out = {"expr": np.array([keys[nm].value for nm in expression_names(rig)], np.float32),
           "shape": np.asarray(rig.get("mvp4d_shape", [0.0]), np.float32)}
    arm = armature_of(rig)
    pb = arm.pose.bones if arm is not None else {}

    def aa(bone: str) -> np.ndarray:
        if bone not in pb:
            return np.zeros(3, np.float32)
        return quat_to_axis_angle(np.asarray(pb[bone].rotation_quaternion)).astype(np.float32)

    out.update(global_rot=aa("root"), neck_pose=aa("neck"), jaw_pose=aa("jaw"),
               eye_pose=np.concatenate([aa("eye_left"), aa("eye_right")]),
               transl=np.asarray(pb["root"].location if "root" in pb else (0, 0, 0), np.float32))
    return out


def keyframe_sequence(rig, seq: dict[str, np.ndarray], frame_start: int) -> int:
    """Key every frame of a FLAME sequence (``protocol.ANIMATION_KEYS``) from ``frame_start``.

    Existing keys of those channels inside the new range are replaced. Returns the frame count.
    """
    T = int(np.asarray(seq["expr"]).shape[0])
    frames = np.arange(frame_start, frame_start + T, dtype=np.float64)
    key = rig.data.shape_keys
    names = expression_names(rig)
    expr = np.asarray(seq["expr"], np.float64)
    for i, nm in enumerate(names):
        vals = np.clip(expr[:, i], -EXPR_RANGE, EXPR_RANGE) if i < expr.shape[1] else np.zeros(T)
        anim.set_channel(key, f'key_blocks["{nm}"].value', 0, frames, vals, group="Expressions")
    arm = armature_of(rig)
    if arm is None:
        return T
    per_frame = [_pose_quaternions({k: np.asarray(v)[t] for k, v in seq.items() if k != "shape"}) for t in range(T)]
    for bone in per_frame[0] if per_frame else {}:
        if bone not in arm.pose.bones:
            continue
        q = np.stack([pf[bone] for pf in per_frame])
        for c in range(4):
            anim.set_channel(arm, f'pose.bones["{bone}"].rotation_quaternion', c, frames, q[:, c], group=bone)
    if "transl" in seq and "root" in arm.pose.bones:
        tr = np.asarray(seq["transl"], np.float64).reshape(T, 3)
        for c in range(3):
            anim.set_channel(arm, 'pose.bones["root"].location', c, frames, tr[:, c], group="root")
    return T


def read_sequence(rig, frames: np.ndarray) -> dict[str, np.ndarray]:
    """FLAME parameters per frame from the rig's animation (static values where a channel has no keys)."""
    T = len(frames)
    cur = get_parameters(rig)
    key = rig.data.shape_keys
    names = expression_names(rig)
    expr = np.stack([anim.evaluate(key, f'key_blocks["{nm}"].value', 0, frames, key.key_blocks[nm].value)
                     for nm in names], axis=1) if names else np.zeros((T, 0))
    out = {"expr": expr.astype(np.float32)}
    arm = armature_of(rig)
    quats = {}
    for bone in ("root", "neck", "jaw", "eye_left", "eye_right"):
        if arm is None or bone not in arm.pose.bones:
            quats[bone] = np.tile([1.0, 0, 0, 0], (T, 1))
            continue
        pb = arm.pose.bones[bone]
        path = f'pose.bones["{bone}"].rotation_quaternion'
        quats[bone] = np.stack([anim.evaluate(arm, path, c, frames, pb.rotation_quaternion[c]) for c in range(4)], 1)
    aa = {b: quat_to_axis_angle(q).astype(np.float32) for b, q in quats.items()}
    out.update(global_rot=aa["root"], neck_pose=aa["neck"], jaw_pose=aa["jaw"],
               eye_pose=np.concatenate([aa["eye_left"], aa["eye_right"]], axis=1))
    if arm is not None and "root" in arm.pose.bones:
        loc = arm.pose.bones["root"].location
        out["transl"] = np.stack([anim.evaluate(arm, 'pose.bones["root"].location', c, frames, loc[c])
                                  for c in range(3)], 1).astype(np.float32)
    else:
        out["transl"] = np.zeros((T, 3), np.float32)
    out["shape"] = cur["shape"]
    out["_quaternions"] = np.stack([quats[b] for b in ("root", "neck", "jaw", "eye_left", "eye_right")], 1)
    return out


