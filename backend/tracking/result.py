"""The tracking result, and moving a head pose into the camera (canonicalisation).

After tracking the head sits at identity pose (``global_rot = 0``, ``transl = 0``) and the reference
camera holds the head pose (docs/architecture.md, "head pose"). :func:`absorb_head_pose` brings any
posed parameters + camera (e.g. the user's Blender rig) into that form without changing the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..cameras import Camera
from ..flame.lbs import Flame, FlameParams, axis_angle_to_matrix
from .landmarks import FaceLandmarks


@dataclass
class TrackResult:
    """FLAME parameters and reference camera of one image, with the landmark fit quality.

    Attributes:
        params: one-frame :class:`FlameParams`, canonical: ``global_rot = 0`` and ``transl = 0``.
        camera: the reference camera (name ``"reference"``) in FLAME world; it holds the head pose.
        landmark_ids: (L,) MediaPipe ids the model embeds (None when no tracking ran).
        landmarks_px: (L, 2) detected pixel positions of those ids.
        projected_px: (L, 2) the fitted model's landmarks projected through ``camera``.
        mean_error_px: mean Euclidean distance between the two, pixels.
        face_box_size_px: longest side of the detected 478-landmark box, pixels.
        relative_error: ``mean_error_px / face_box_size_px``.
        face: all 478 detected landmarks (when tracked).
        matted, alpha: the reference image on white (uint8 (H, W, 3)) and its matte (float32 (H, W)),
            filled in by :func:`backend.tracking.track_image` and :func:`backend.tracking.load_track`.
        model_id: the head model the parameters belong to.
        info: fit diagnostics (losses, focal, timings).
    """

    params: FlameParams
    camera: Camera
    landmark_ids: np.ndarray | None = None
    landmarks_px: np.ndarray | None = None
    projected_px: np.ndarray | None = None
    mean_error_px: float | None = None
    face_box_size_px: float | None = None
    relative_error: float | None = None
    face: FaceLandmarks | None = None
    matted: np.ndarray | None = None
    alpha: np.ndarray | None = None
    model_id: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def per_landmark_error_px(self) -> np.ndarray | None:
        if self.landmarks_px is None or self.projected_px is None:
            return None
        return np.linalg.norm(self.projected_px - self.landmarks_px, axis=1)


# ---------------------------------------------------------------------------------------------
# Canonicalisation of given parameters
# ---------------------------------------------------------------------------------------------


def head_transform(flame: Flame, params: FlameParams) -> np.ndarray:
    """4x4 rigid map from the canonical head (``global_rot = transl = 0``) to ``params``' head.

    FLAME applies the global rotation about the root joint ``J0`` (regressed from the shaped and
    expressed mesh) and then adds ``transl``: ``x -> R (x - J0) + J0 + transl``. Uses frame 0.
    """
    p0 = params.frame(0)
    canon = FlameParams(
        shape=p0.shape, expr=p0.expr, global_rot=torch.zeros_like(p0.global_rot), neck_pose=p0.neck_pose,
        jaw_pose=p0.jaw_pose, eye_pose=p0.eye_pose, transl=torch.zeros_like(p0.transl),
    )
    with torch.no_grad():
        j0 = flame(canon).joints[0, 0].cpu().double().numpy()
        R = axis_angle_to_matrix(p0.global_rot[0].double()).cpu().numpy()
    m = np.eye(4)
    m[:3, :3] = R
    m[:3, 3] = j0 - R @ j0 + p0.transl[0].detach().cpu().double().numpy()
    return m


def absorb_head_pose(flame: Flame, params: FlameParams, camera: Camera) -> tuple[FlameParams, Camera]:
    """Move ``params``' head pose into the camera: same image, ``global_rot = transl = 0``."""
    m = head_transform(flame, params)
    p0 = params.frame(0)
    canon = FlameParams(
        shape=p0.shape.clone(), expr=p0.expr.clone(), global_rot=torch.zeros_like(p0.global_rot),
        neck_pose=p0.neck_pose.clone(), jaw_pose=p0.jaw_pose.clone(), eye_pose=p0.eye_pose.clone(),
        transl=torch.zeros_like(p0.transl),
    )
    cam = Camera(K=camera.K, world_to_cam=camera.world_to_cam @ m, width=camera.width, height=camera.height,
                 name=camera.name, key=camera.key)
    return canon, cam
