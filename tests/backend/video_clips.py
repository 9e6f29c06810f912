"""Clips with a known performance, for the video-tracking tests.

:func:`render_toy_clip` renders the toy head, textured with the astronaut photo by the projection
generator (as the demo's corpus), driven by a known expression + jaw + head-pose sequence while the
camera-to-head distance changes, so a tracker's output can be compared with the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backend.cameras import Camera, intrinsics
from backend.flame.lbs import Flame, FlameParams
from backend.generators.projection import ProjectionGenerator
from backend.tracking import TrackResult

FLIP = np.diag([1.0, -1.0, -1.0])


@dataclass
class ToyClip:
    frames: np.ndarray  # (T, H, W, 3) uint8
    params: FlameParams  # the truth: global_rot is the head rotation relative to the frontal view
    distances: np.ndarray  # (T,) camera-to-head distance, metres
    fps: float


def truth_sequence(flame: Flame, shape: torch.Tensor, num_frames: int, head_rotation: float = 1.0) -> FlameParams:
    """Smooth, independent curves: jaw, smile, brow raise, blink; yaw, pitch, roll.

    The expression components are ones landmarks can tell apart: the toy's ``mouth_wide`` and
    ``mouth_pucker`` move the landmarks along the same line (cosine -0.99), so no landmark tracker
    could say which of the two a clip shows.
    """
    t = torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64)
    names = list(flame.model.expression_names)
    p = FlameParams.zeros(flame.model, num_frames)
    p.shape = shape.detach().clone().to(p.shape)
    wave = lambda f, ph: torch.sin(2 * np.pi * f * t + ph)  # noqa: E731
    p.jaw_pose[:, 0] = (0.12 * (1 - torch.cos(2 * np.pi * 1.5 * t))).float()  # 0 .. 0.24 rad
    p.expr[:, names.index("smile")] = (0.5 + 0.5 * wave(1.0, 0.3)).float()
    p.expr[:, names.index("brow_raise")] = (0.5 + 0.5 * wave(0.7, 2.0)).float()
    blink = (0.35 + 0.35 * wave(1.3, 4.0)).float()
    p.expr[:, names.index("blink_left")] = blink
    p.expr[:, names.index("blink_right")] = blink
    p.global_rot[:, 1] = (np.radians(15) * wave(0.8, 0.0)).float()  # yaw
    p.global_rot[:, 0] = (np.radians(8) * wave(0.6, 1.0)).float()  # pitch
    p.global_rot[:, 2] = (np.radians(5) * wave(0.5, 2.5)).float()  # roll
    p.global_rot *= head_rotation
    return p


def render_toy_clip(flame: Flame, reference: TrackResult, image: np.ndarray, num_frames: int = 40,
                    size: int = 256, fps: float = 25.0, head_rotation: float = 1.0) -> ToyClip:
    """Render the truth sequence frontally; the head moves from 0.55 m to 0.75 m from the camera and back.

    ``head_rotation`` scales the head's turning (yaw ±15°, pitch ±8°, roll ±5° at 1; 0: a still head).
    """
    with torch.no_grad():
        ref_verts = flame(reference.params).vertices[0]
    gen = ProjectionGenerator(flame.model.faces, ref_verts, reference.camera, image)
    params = truth_sequence(flame, reference.params.shape, num_frames, head_rotation)
    with torch.no_grad():
        verts = flame(params).vertices
    t = np.linspace(0.0, 1.0, num_frames)
    distances = 0.65 - 0.10 * np.cos(2 * np.pi * t)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for k in range(num_frames):
        w2c = np.eye(4)
        w2c[:3, :3] = FLIP
        w2c[:3, 3] = [0.0, 0.0, distances[k]]
        cam = Camera(K=intrinsics(2.2 * size, size, size), world_to_cam=w2c, width=size, height=size, name="clip")
        frames[k] = gen.render(verts[k : k + 1], cam)[0]
    return ToyClip(frames=frames, params=params, distances=distances, fps=fps)
