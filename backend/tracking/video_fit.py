"""FLAME fit to a whole clip at once: per-frame expression and pose, one identity, smooth in time.

What is fitted (for T frames together, one torch graph, L-BFGS)
---------------------------------------------------------------
* per frame: ``expr (T, E)``, ``jaw_pose``, ``neck_pose``, ``eye_pose`` and the head pose relative to
  the camera (rotation ``R_t`` and translation, parametrised like :mod:`.fit`: where the head's pivot
  projects plus log-depth), so a head moving towards the camera is followed, not read as a bigger face;
* over the clip: the identity ``shape`` (or fixed, from the avatar's own track) and the focal length.

The data term is the squared reprojection error of the model's embedded MediaPipe landmarks, in units
of each frame's face box, averaged over frames; L2 priors keep coefficients plausible (as in the photo
fit) and the temporal prior penalises second differences (acceleration) of every per-frame quantity,
weighted by ``smoothing``: jitter costs much, real motion little. Neck and head rotation both turn the
face rigidly and landmarks cannot tell them apart, so the neck carries a strong prior and the head
pose takes the motion.

Initialisation: the photo fit (:func:`fit_flame`) on a key frame gives shape, focal and pose; every
other frame starts from it moved by the 2D similarity between its landmarks and the key frame's
(in-plane rotation, scale = depth, position), so large head motion starts close.

:func:`to_animation` turns the fit into the job's animation (``protocol.ANIMATION_KEYS``): head pose as
FLAME ``global_rot``/``transl`` relative to a reference (the camera's frontal view and the first
frame's position, or a chosen neutral frame, which also neutralises expression), optionally dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from ..flame.lbs import Flame, FlameParams, axis_angle_to_matrix
from ..threads import torch_threads
from .fit import _FLIP, _lbfgs, _rot_z, _similarity_2d, fit_flame, import_optimizer, landmark_rig
from .landmarks import FaceLandmarks
from .result import TrackResult

#: default weights (same units as :func:`fit_flame`: squared coefficients vs squared box-relative error)
EXPR_PRIOR, JAW_PRIOR, EYE_PRIOR, NECK_PRIOR, SHAPE_PRIOR, FOCAL_PRIOR = 1e-5, 1e-4, 1e-4, 1e-2, 1e-5, 1e-3
#: temporal (acceleration) prior weight at ``smoothing = 1``; per quantity scaled by its typical size
SMOOTH_WEIGHT = 2e-4
#: L-BFGS steps of the key frame's photo fit: it only seeds identity, focal and pose, which the clip fit
#: refines, so fewer than a photo's 150 do (same accuracy on the ground-truth clip, ~1.4 s less per run)
KEY_FRAME_STEPS = 60
#: yaw starts of the key frame's rigid fit: the one whose closed-form start fits the 2D landmarks best
#: is refined (``fit_flame(pick_yaw=True)``), one rigid refinement instead of three
KEY_FRAME_YAWS = tuple(float(y) for y in range(-45, 50, 5))


def fit_key_frame(flame: Flame, points: np.ndarray, width: int, height: int,
                  check: Callable[[], None] | None = None) -> TrackResult:
    """The photo fit of one frame's landmarks (478, 2): seeds identity, focal and pose of :func:`fit_clip`.

    Separate so that the caller can run it as soon as the key frame's landmarks exist, while the
    rest of the clip is still being detected (:mod:`.video_cli` does, in a thread).
    """
    pts = np.asarray(points, dtype=np.float64)
    lo, hi = pts.min(0), pts.max(0)
    face = FaceLandmarks(points=pts, z=np.zeros(len(pts)), box=(lo[0], lo[1], hi[0], hi[1]), image_size=(width, height))
    return fit_flame(flame, face, width, height, steps=KEY_FRAME_STEPS, yaw_guesses=KEY_FRAME_YAWS, pick_yaw=True,
                     check=check)


@dataclass
class ClipFit:
    """The fit of a clip: per-frame FLAME parameters (canonical head) and per-frame head pose.

    ``params.global_rot``/``transl`` are zero; the head pose is ``x_cam = R[t] @ (x - pivot) + trans[t]``.
    ``errors_px`` is each frame's mean landmark error, ``relative_errors`` the same over the face box.
    """

    params: FlameParams
    R: np.ndarray  # (T, 3, 3)
    trans: np.ndarray  # (T, 3)
    pivot: np.ndarray  # (3,)
    focal_px: float
    width: int
    height: int
    errors_px: np.ndarray  # (T,)
    relative_errors: np.ndarray  # (T,)
    projected_px: np.ndarray  # (T, L, 2)
    target_px: np.ndarray  # (T, L, 2)
    loss: float

    def head_rotation_deg(self) -> np.ndarray:
        """(T, 3) head yaw/pitch/roll-like Euler angles relative to the frontal view, degrees (diagnostics)."""
        return Rotation.from_matrix(np.einsum("ij,tjk->tik", _FLIP, self.R)).as_euler("YXZ", degrees=True)


def _second_diff(x: torch.Tensor) -> torch.Tensor:
    return x[2:] - 2.0 * x[1:-1] + x[:-2] if len(x) >= 3 else x[:0]


def fit_clip(
    flame: Flame,
    points: np.ndarray,
    width: int,
    height: int,
    *,
    shape: torch.Tensor | None = None,
    smoothing: float = 1.0,
    key_frame: int | None = None,
    key: TrackResult | None = None,
    steps: int = 100,
    rigid_steps: int = 60,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int, int], None] | None = None,
    check: Callable[[], None] | None = None,
) -> ClipFit:
    """Fit FLAME to ``points`` (T, 478, 2): MediaPipe landmarks of every frame, gaps already filled.

    Args:
        flame: the head model (with a MediaPipe landmark embedding).
        shape: fixed identity (e.g. the avatar's tracked shape); None fits one shared over the clip.
        smoothing: strength of the temporal prior (0 = none, 1 = default, larger = smoother).
        key_frame: frame for the initial single-image fit (default: the middle frame).
        key: that fit already made (:func:`fit_key_frame` on ``points[key_frame]``); None makes it here.
        steps, rigid_steps: L-BFGS iterations of the full and of the rigid stage.
        dtype: precision of the clip fit (float32: ~1.5x cheaper than float64, same accuracy on the
            ground-truth clip; the key-frame fit stays float64).
        progress: ``progress(done, total)`` after each of the three stages; ``check``: cancel point.
    """
    with torch_threads(1):
        return _fit_clip(flame, points, width, height, shape, smoothing, key_frame, key, steps, rigid_steps, dtype,
                         progress, check)


def _fit_clip(flame, points, width, height, shape_fixed, smoothing, key_frame, key, steps, rigid_steps, dt, progress,
              check):
    T = len(points)
    ids = flame.landmark_ids.detach().cpu().numpy().astype(np.int64)
    target_np = np.asarray(points, dtype=np.float64)[:, ids]  # (T, L, 2)
    full = np.asarray(points, dtype=np.float64)
    boxes = (full.max(1) - full.min(1)).max(-1).clip(min=1.0)  # (T,)
    k0 = T // 2 if key_frame is None else int(np.clip(key_frame, 0, T - 1))
    import_optimizer(check)

    # 1. one photo fit on the key frame: identity, focal and a pose to start every frame from
    if key is None:
        key = fit_key_frame(flame, full[k0], width, height, check)
    if progress is not None:
        progress(1, 3)
    rig = landmark_rig(flame, dtype=dt)
    shape0 = (shape_fixed if shape_fixed is not None else key.params.shape).detach().to(dt).reshape(-1)
    with torch.no_grad():
        p0 = FlameParams.zeros(rig, 1, dtype=dt)
        p0.shape = shape0
        neutral = rig(p0).landmarks[0]
    pivot = neutral.mean(0)
    w2c = key.camera.world_to_cam
    R_key = w2c[:3, :3]
    t_key = w2c[:3, :3] @ pivot.numpy() + w2c[:3, 3]  # camera-space pivot
    f0 = float(key.camera.K[0, 0])
    principal = torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], dtype=dt)
    uv_key = t_key[:2] / t_key[2] * f0 + principal.numpy()

    R0 = np.empty((T, 3, 3))
    uv0 = np.empty((T, 2))
    z0 = np.empty(T)
    for t in range(T):  # each frame: the key pose moved by the frame's 2D similarity to the key frame
        s, angle, tr = _similarity_2d(target_np[k0], target_np[t])
        R0[t] = _rot_z(angle) @ R_key
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        uv0[t] = s * rot @ uv_key + tr
        z0[t] = t_key[2] / max(s, 1e-6)

    unit = torch.as_tensor(boxes, dtype=dt)[:, None]
    center = torch.as_tensor(target_np.mean(1), dtype=dt)
    target = torch.as_tensor(target_np, dtype=dt)
    R0_t = torch.as_tensor(R0, dtype=dt)
    delta = torch.zeros(T, 3, dtype=dt, requires_grad=True)
    uv = torch.as_tensor((uv0 - target_np.mean(1)) / boxes[:, None], dtype=dt).requires_grad_(True)
    log_z = torch.as_tensor(np.log(z0), dtype=dt).requires_grad_(True)
    log_f = torch.tensor(math.log(f0), dtype=dt, requires_grad=True)
    E = flame.num_expr
    expr = torch.zeros(T, E, dtype=dt, requires_grad=True)
    jaw = torch.zeros(T, 3, dtype=dt, requires_grad=True)
    neck = torch.zeros(T, 3, dtype=dt, requires_grad=True)
    eyes = torch.zeros(T, 6, dtype=dt, requires_grad=True)
    shape = shape0.clone().requires_grad_(shape_fixed is None)
    lam = SMOOTH_WEIGHT * max(float(smoothing), 0.0)

    def rotations() -> torch.Tensor:
        return axis_angle_to_matrix(delta) @ R0_t

    def translations() -> torch.Tensor:
        z = torch.exp(log_z)[:, None]
        pix = center + uv * unit
        return torch.cat([(pix - principal) * z / torch.exp(log_f), z], dim=1)

    def model_points(rigid_only: bool) -> torch.Tensor:
        zeros = torch.zeros(T, 3, dtype=dt)
        p = FlameParams(
            shape=shape, expr=expr if not rigid_only else expr.detach(), global_rot=zeros,
            neck_pose=neck if not rigid_only else neck.detach(), jaw_pose=jaw if not rigid_only else jaw.detach(),
            eye_pose=eyes if not rigid_only else eyes.detach(), transl=zeros,
        )
        return rig(p).landmarks  # (T, L, 3)

    def project(X: torch.Tensor) -> torch.Tensor:
        pc = torch.einsum("tij,tlj->tli", rotations(), X - pivot) + translations()[:, None, :]
        return pc[..., :2] / pc[..., 2:3].clamp_min(1e-6) * torch.exp(log_f) + principal

    def data_term(X: torch.Tensor) -> torch.Tensor:
        r = (project(X) - target) / unit[:, :, None]
        return (r * r).sum(-1).mean()

    def temporal() -> torch.Tensor:
        if lam == 0.0 or T < 3:
            return torch.zeros((), dtype=dt)
        acc = lambda x: (_second_diff(x) ** 2).sum() / T  # noqa: E731
        rigid = acc(rotations().reshape(T, 9)) + acc(uv) + acc(log_z[:, None])
        face_motion = acc(expr) * 0.01 + acc(jaw) + acc(neck) + acc(eyes) * 0.1
        return lam * (rigid + face_motion)

    def priors() -> torch.Tensor:
        reg = (EXPR_PRIOR * (expr * expr).sum() + JAW_PRIOR * (jaw * jaw).sum() + EYE_PRIOR * (eyes * eyes).sum()
               + NECK_PRIOR * (neck * neck).sum()) / T
        reg = reg + FOCAL_PRIOR * (log_f - math.log(f0)) ** 2
        if shape_fixed is None:
            reg = reg + SHAPE_PRIOR * (shape * shape).sum()
        return reg

    with torch.no_grad():
        X_rigid = model_points(True)
    _lbfgs([delta, uv, log_z], lambda: data_term(X_rigid) + temporal(), rigid_steps, check)
    if progress is not None:
        progress(2, 3)
    free = [delta, uv, log_z, log_f, expr, jaw, neck, eyes] + ([shape] if shape_fixed is None else [])
    loss = _lbfgs(free, lambda: data_term(model_points(False)) + temporal() + priors(), steps, check)
    if progress is not None:
        progress(3, 3)

    with torch.no_grad():
        proj = project(model_points(False)).numpy()
        R, tr = rotations().numpy(), translations().numpy()
        focal = float(torch.exp(log_f))
    errors = np.linalg.norm(proj - target_np, axis=-1).mean(-1)
    dtype = flame.v_template.dtype
    params = FlameParams.zeros(flame.model, T, dtype=dtype)
    params.shape = shape.detach().to(dtype).clone()
    params.expr, params.jaw_pose = expr.detach().to(dtype), jaw.detach().to(dtype)
    params.neck_pose, params.eye_pose = neck.detach().to(dtype), eyes.detach().to(dtype)
    return ClipFit(params=params, R=R, trans=tr, pivot=pivot.numpy(), focal_px=focal, width=width, height=height,
                   errors_px=errors, relative_errors=errors / boxes, projected_px=proj, target_px=target_np,
                   loss=float(loss))


# ---------------------------------------------------------------------------------------------
# Fit -> animation
# ---------------------------------------------------------------------------------------------


def to_animation(
    flame: Flame, fit: ClipFit, *, neutral_frame: int | None = None, head_pose: bool = True,
) -> FlameParams:
    """The job's animation: per-frame FLAME parameters with the head pose as ``global_rot``/``transl``.

    The head pose is the head's motion relative to a reference: by default the frontal view of the
    camera (a performer looking into the lens gives ``global_rot = 0``) at the first frame's position;
    with ``neutral_frame`` that frame's pose, and its expression, jaw, neck and eye pose are subtracted
    from every frame (the performer's resting face becomes the avatar's neutral). ``head_pose=False``
    drops head rotation, translation and neck (expression-only driving).
    """
    p = fit.params
    T = p.num_frames
    out = FlameParams(**{k: v.detach().clone() for k, v in vars(p).items()})
    if neutral_frame is not None:
        n = int(neutral_frame)
        for k in ("expr", "jaw_pose", "neck_pose", "eye_pose"):
            setattr(out, k, getattr(out, k) - getattr(out, k)[n : n + 1])
    if not head_pose:
        out.neck_pose = torch.zeros_like(out.neck_pose)
        return out
    ref = 0 if neutral_frame is None else int(neutral_frame)
    R_ref = _FLIP if neutral_frame is None else fit.R[ref]
    A = np.einsum("ji,tjk->tik", R_ref, fit.R)  # R_ref^T R_t
    b = np.einsum("ji,tj->ti", R_ref, fit.trans - fit.trans[ref]) + fit.pivot - A @ fit.pivot
    with torch.no_grad():
        canon = FlameParams(**{k: v.detach().clone() for k, v in vars(out).items()})
        j0 = flame(canon.to(device=flame.device)).joints[:, 0].cpu().double().numpy()  # (T, 3) root joints
    transl = b - j0 + np.einsum("tij,tj->ti", A, j0)
    out.global_rot = torch.as_tensor(Rotation.from_matrix(A).as_rotvec(), dtype=out.expr.dtype)
    out.transl = torch.as_tensor(transl, dtype=out.expr.dtype)
    assert out.global_rot.shape == (T, 3)
    return out


def resample(params: FlameParams, src_fps: float, dst_fps: float) -> FlameParams:
    """Retime a sequence from ``src_fps`` to ``dst_fps`` by linear interpolation over the same duration."""
    T = params.num_frames
    if T < 2 or abs(src_fps - dst_fps) < 1e-9:
        return params
    duration = (T - 1) / src_fps
    n = int(math.floor(duration * dst_fps + 1e-6)) + 1
    t_src = np.arange(T) / src_fps
    t_dst = np.arange(n) / dst_fps

    def interp(a: torch.Tensor) -> torch.Tensor:
        x = a.detach().cpu().double().numpy()
        y = np.stack([np.interp(t_dst, t_src, x[:, c]) for c in range(x.shape[1])], axis=1) if x.shape[1] else \
            np.zeros((n, 0))
        return torch.as_tensor(y, dtype=a.dtype)

    return FlameParams(shape=params.shape.clone(), **{k: interp(v) for k, v in vars(params).items() if k != "shape"})
