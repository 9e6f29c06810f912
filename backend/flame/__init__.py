"""FLAME head model: arrays (:class:`FlameModel`), loading, the toy head and torch skinning.

``load_flame("toy" | path)`` gives a validated :class:`FlameModel`; :class:`Flame` evaluates it
for :class:`FlameParams` batched over frames. See ``docs/architecture.md`` for the conventions
(metres, +y up, face along +z; joints ``[root, neck, jaw, eye_left, eye_right]``).
"""

from .io import load_flame, save_flame_npz
from .lbs import Flame, FlameOutput, FlameParams, axis_angle_to_matrix
from .model import JOINT_NAMES, NUM_MEDIAPIPE_LANDMARKS, FlameModel
from .toy import build_toy_head

__all__ = [
    "Flame",
    "FlameModel",
    "FlameOutput",
    "FlameParams",
    "JOINT_NAMES",
    "NUM_MEDIAPIPE_LANDMARKS",
    "axis_angle_to_matrix",
    "build_toy_head",
    "load_flame",
    "save_flame_npz",
]
