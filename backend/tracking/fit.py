"""FLAME fit to one image by landmark reprojection (paper S2.1; replaces FlowFace).

What is fitted
--------------
Identity ``shape``, ``expr``, ``jaw_pose``, the head pose relative to the camera (rotation and
translation) and the focal length, by minimising the squared distance between the model's embedded
MediaPipe landmarks, projected through a pinhole camera, and MediaPipe's detections. Only the
MediaPipe ids the model embeds (``Flame.landmark_ids``) take part. Residuals are measured in units of
the detected face box (so the weights do not depend on the image size) and regularised by

* L2 priors on ``shape``, ``expr`` (coefficients are in standard deviations) and ``jaw_pose``;
* a weak prior on ``log(focal / focal_init)`` with ``focal_init = 2 * max(W, H)`` px: landmarks alone
  barely separate focal length from distance (only through perspective foreshortening);
* the principal point fixed at the image centre ``((W - 1) / 2, (H - 1) / 2)``.

How
---
1. **Rigid** (neutral head): for a few yaw guesses the pose is initialised in closed form (a 2D
   similarity between the orthographically projected model landmarks and the detections gives roll,
   scale, hence distance, and the image position), refined with L-BFGS over rotation, image position,
   log-distance and log-focal; the best guess is kept.
2. **Everything**: L-BFGS over the rigid parameters plus shape, expression and jaw.

The head pose is parametrised directly as the camera extrinsics of the canonical head (rotation about
the neutral landmarks' centroid, translation as "where that centroid projects" plus log-depth), which
is well conditioned and makes the **canonicalisation** exact: the result has ``global_rot = 0``,
``transl = 0`` and a reference :class:`~backend.cameras.Camera` whose ``world_to_cam`` holds the head
pose (docs/architecture.md, "head pose"). FLAME's own global rotation acts about the root joint, so
the same pose expressed as ``global_rot``/``transl`` would differ only by a root-joint offset;
:func:`backend.tracking.result.absorb_head_pose` converts such parameters (e.g. the Blender rig's).

Cost: the optimisation runs on :func:`landmark_rig`, an exact reduction of the model to the landmark
triangles (plus the joints), in float64 on one CPU thread; ~0.5-2 s for the toy head on 2 cores.
"""

from __future__ import annotations

import importlib
import math
import sys
import threading
from collections.abc import Callable

import numpy as np
import torch

from ..cameras import Camera, intrinsics
from ..errors import MVP4DError
from ..flame.lbs import Flame, FlameParams, axis_angle_to_matrix
from ..flame.model import FlameModel
from ..threads import torch_threads
from .landmarks import FaceLandmarks
from .result import TrackResult

#: OpenCV camera looking at the FLAME face from +z: x stays, y (up) and z (towards the viewer) flip
_FLIP = np.diag([1.0, -1.0, -1.0])
#: the fewest embedded landmarks a fit can use
MIN_LANDMARKS = 8


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])


def _rot_z(rad: float) -> np.ndarray:
    return np.array([[math.cos(rad), -math.sin(rad), 0.0], [math.sin(rad), math.cos(rad), 0.0], [0.0, 0.0, 1.0]])


def _similarity_2d(src: np.ndarray, dst: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Least-squares ``dst ~ s * R(angle) @ src + t`` (Umeyama, no reflection): ``(s, angle, t)``."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    # complex-number form: b ~ z * a with z = s * e^{i angle}
    za = a[:, 0] + 1j * a[:, 1]
    zb = b[:, 0] + 1j * b[:, 1]
    z = np.vdot(za, zb) / max(float(np.vdot(za, za).real), 1e-12)
    s, angle = float(abs(z)), float(np.angle(z))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return s, angle, md - s * rot @ ms


def _closed_form_residual(centred: np.ndarray, target: np.ndarray, yaw: float) -> float:
    """Mean squared 2D residual of the neutral head turned by ``yaw`` and similarity-fitted to ``target``."""
    ortho = (centred @ (_FLIP @ _rot_y(yaw)).T)[:, :2]
    s, angle, t2 = _similarity_2d(ortho, target)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    r = ortho @ (s * rot).T + t2 - target
    return float((r * r).sum(-1).mean())


class _Pose(torch.nn.Module):
    """Camera extrinsics + focal of the canonical head, in well-scaled units.

    ``x_cam = R(delta) @ R0 @ (x - pivot) + t`` with ``t = ((u0 - cx) z / f, (v0 - cy) z / f, z)``:
    ``uv`` is where the pivot projects (in face-box units around the box centre), ``log_z`` the pivot
    depth and ``log_f`` the focal length.
    """

    def __init__(self, R0: np.ndarray, uv_px: np.ndarray, z: float, f: float, center: np.ndarray, unit: float):
        super().__init__()
        dt = torch.float64
        self.register_buffer("R0", torch.as_tensor(R0, dtype=dt))
        self.register_buffer("center", torch.as_tensor(center, dtype=dt))
        self.unit = float(unit)
        self.delta = torch.nn.Parameter(torch.zeros(3, dtype=dt))
        self.uv = torch.nn.Parameter(torch.as_tensor((np.asarray(uv_px) - center) / unit, dtype=dt))
        self.log_z = torch.nn.Parameter(torch.tensor(math.log(z), dtype=dt))
        self.log_f = torch.nn.Parameter(torch.tensor(math.log(f), dtype=dt))

    def rotation(self) -> torch.Tensor:
        return axis_angle_to_matrix(self.delta) @ self.R0

    def translation(self, principal: torch.Tensor) -> torch.Tensor:
        f, z = torch.exp(self.log_f), torch.exp(self.log_z)
        uv = self.center + self.uv * self.unit
        return torch.cat([(uv - principal) * z / f, z[None]])

    def project(self, points: torch.Tensor, pivot: torch.Tensor, principal: torch.Tensor) -> torch.Tensor:
        pc = (points.to(torch.float64) - pivot) @ self.rotation().T + self.translation(principal)
        zc = pc[:, 2:3].clamp_min(1e-6)
        return pc[:, :2] / zc * torch.exp(self.log_f) + principal


def landmark_rig(flame: Flame, dtype: torch.dtype = torch.float64) -> Flame:
    """A :class:`Flame` over just the landmark triangles, giving the same landmarks, ~20x cheaper.

    Joints are regressed from the whole mesh, and regression is linear, so the joint template and
    the joint blendshapes (``J_regressor @ v_template``, ``J_regressor @ shapedirs``, ...) become
    extra "vertices" that the reduced regressor simply selects. Landmarks are then exactly those of
    ``flame`` (same skinning code) for any shape, expression and pose.
    """
    m = flame.model
    tri = np.asarray(m.faces)[np.asarray(m.landmark_faces)]  # (L, 3) vertex ids
    keep, inverse = np.unique(tri.reshape(-1), return_inverse=True)
    n, J = len(keep), m.num_joints
    Jr = np.asarray(m.J_regressor, dtype=np.float64)
    cat = lambda a, b: np.concatenate([np.asarray(a, np.float64)[keep], b], axis=0)  # noqa: E731
    regressor = np.zeros((J, n + J))
    regressor[np.arange(J), n + np.arange(J)] = 1.0
    root_only = np.zeros((J, J))
    root_only[:, 0] = 1.0
    sub = FlameModel(
        v_template=cat(m.v_template, Jr @ m.v_template),
        faces=inverse.reshape(-1, 3).astype(np.int64),
        shapedirs=cat(m.shapedirs, np.einsum("jv,vcs->jcs", Jr, m.shapedirs)),
        exprdirs=cat(m.exprdirs, np.einsum("jv,vcs->jcs", Jr, m.exprdirs)),
        posedirs=cat(m.posedirs, np.zeros((J, 3, m.posedirs.shape[2]))),
        J_regressor=regressor,
        parents=np.asarray(m.parents, dtype=np.int64),
        lbs_weights=cat(m.lbs_weights, root_only),
        landmark_faces=np.arange(len(tri), dtype=np.int64),
        landmark_bary=np.asarray(m.landmark_bary, dtype=np.float64),
        landmark_ids=np.asarray(m.landmark_ids, dtype=np.int64),
        model_id=f"{m.model_id}:landmarks",
    )
    return Flame(sub, dtype=dtype)


def import_optimizer(check: Callable[[], None] | None = None) -> None:
    """Import ``torch._dynamo`` (once per process) while honouring cancel requests.

    The first ``torch.optim`` optimizer a process builds imports it (measured 8-10 s on the busy
    2-core machine, ~1-2 s on an idle one), and an import cannot be interrupted. It runs in a
    daemon thread here while this thread keeps calling ``check`` every 0.1 s, so a stop during it
    takes effect at once (the abandoned import dies with the process).
    """
    if "torch._dynamo" in sys.modules:
        return
    worker = next((t for t in threading.enumerate() if t.name == "mvp4d-import-optimizer"), None)
    if worker is None:
        worker = threading.Thread(target=importlib.import_module, args=("torch._dynamo",),
                                  name="mvp4d-import-optimizer", daemon=True)
        worker.start()
    while worker.is_alive():
        worker.join(0.1)
        if check is not None:
            check()


def _lbfgs(
    parameters: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], max_iter: int,
    check: Callable[[], None] | None = None,
) -> float:
    """L-BFGS on ``loss_fn``; ``check`` (a cancel point) runs on every function evaluation (~ms)."""
    opt = torch.optim.LBFGS(
        parameters, lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-10, tolerance_change=1e-14,
    )

    def closure() -> torch.Tensor:
        if check is not None:
            check()
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(loss_fn())


# ---------------------------------------------------------------------------------------------
# The fit
# ---------------------------------------------------------------------------------------------


def fit_flame(
    flame: Flame,
    landmarks: FaceLandmarks,
    width: int,
    height: int,
    *,
    shape_prior: float = 1e-5,
    expr_prior: float = 1e-5,
    jaw_prior: float = 1e-4,
    focal_prior: float = 1e-3,
    focal_init: float | None = None,
    yaw_guesses: tuple[float, ...] = (0.0, -35.0, 35.0),
    pick_yaw: bool = False,
    rigid_steps: int = 40,
    steps: int = 150,
    progress: Callable[[int, int], None] | None = None,
    check: Callable[[], None] | None = None,
) -> TrackResult:
    """Fit FLAME (shape, expression, jaw) and the reference camera to detected landmarks.

    Args:
        flame: the head model; it must embed MediaPipe landmarks (``landmark_ids``).
        landmarks: the detections (:func:`backend.tracking.landmarks.detect_landmarks`).
        width, height: the image size in pixels.
        shape_prior, expr_prior, jaw_prior: weights of the L2 priors (squared coefficients /
            squared radians) against the mean squared residual in face-box units.
        focal_prior: weight of ``log(f / focal_init) ** 2``.
        focal_init: focal-length prior centre in pixels (default ``2 * max(width, height)``).
        yaw_guesses: head yaw initialisations of the rigid stage, degrees.
        pick_yaw: refine only the guess whose closed-form start (orthographic similarity of the
            turned neutral head to the 2D landmarks) fits best, instead of refining every guess:
            the landmarks' 2D asymmetry picks the yaw, one rigid refinement instead of several.
        rigid_steps, steps: L-BFGS iterations of the rigid and of the full stage.
        progress: called as ``progress(done, total)`` after each stage.
        check: cancel point (e.g. ``CancelToken.check``), run on every optimiser evaluation.

    Returns:
        A canonical :class:`TrackResult` (``global_rot = transl = 0``; the camera holds the pose).
    """
    with torch_threads(1):
        return _fit(flame, landmarks, width, height, shape_prior=shape_prior, expr_prior=expr_prior,
                    jaw_prior=jaw_prior, focal_prior=focal_prior, focal_init=focal_init, yaw_guesses=yaw_guesses,
                    pick_yaw=pick_yaw, rigid_steps=rigid_steps, steps=steps, progress=progress, check=check)


def _fit(
    flame: Flame,
    landmarks: FaceLandmarks,
    width: int,
    height: int,
    *,
    shape_prior: float,
    expr_prior: float,
    jaw_prior: float,
    focal_prior: float,
    focal_init: float | None,
    yaw_guesses: tuple[float, ...],
    rigid_steps: int,
    pick_yaw: bool = False,
    steps: int,
    progress: Callable[[int, int], None] | None,
    check: Callable[[], None] | None = None,
) -> TrackResult:
    if flame.landmark_ids is None or int(flame.landmark_ids.numel()) < MIN_LANDMARKS:
        raise MVP4DError(
            "FLAME_INVALID",
            f"the head model {flame.model_id} has no MediaPipe landmark embedding, so it cannot be tracked",
            "Put FLAME's mediapipe_landmark_embedding.npz next to the FLAME file, or use 'toy'.",
        )
    ids = flame.landmark_ids.detach().cpu().numpy().astype(np.int64)
    target_np = np.asarray(landmarks.points, dtype=np.float64)[ids]
    unit = max(landmarks.box_size, 1.0)
    f_init = float(focal_init or 2.0 * max(width, height))
    principal = torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], dtype=torch.float64)
    target = torch.as_tensor(target_np)
    box_center = landmarks.center
    total = len(yaw_guesses) + 1

    import_optimizer(check)
    rig = landmark_rig(flame)
    with torch.no_grad():
        neutral = rig(FlameParams.zeros(rig, 1, dtype=torch.float64)).landmarks[0]  # (L, 3)
    pivot = neutral.mean(0)

    def data_term(pose: _Pose, points: torch.Tensor) -> torch.Tensor:
        r = (pose.project(points, pivot, principal) - target) / unit
        return (r * r).sum(-1).mean()

    def focal_term(pose: _Pose) -> torch.Tensor:
        return focal_prior * (pose.log_f - math.log(f_init)) ** 2

    # 1. rigid: closed-form starts at a few yaws, refined; keep the best
    centred = (neutral - pivot).numpy()
    if pick_yaw and len(yaw_guesses) > 1:
        yaw_guesses = (min(yaw_guesses, key=lambda y: _closed_form_residual(centred, target_np, y)),)
        total = 2
    best: tuple[float, _Pose] | None = None
    for k, yaw in enumerate(yaw_guesses):
        R_yaw = _FLIP @ _rot_y(yaw)
        ortho = (centred @ R_yaw.T)[:, :2]  # camera x right, y down
        s, angle, t2 = _similarity_2d(ortho, target_np)
        R0 = _rot_z(angle) @ R_yaw
        z0 = f_init / max(s, 1e-9)  # orthographic scale s = f / z (pixels per metre)
        pose = _Pose(R0, t2, z0, f_init, box_center, unit)
        loss = _lbfgs(list(pose.parameters()), lambda p=pose: data_term(p, neutral) + focal_term(p), rigid_steps, check)
        if best is None or loss < best[0]:
            best = (loss, pose)
        if progress is not None:
            progress(k + 1, total)
    if best is None:
        raise ValueError("fit_flame: yaw_guesses must hold at least one angle")
    rigid_loss, pose = best

    # 2. everything: shape, expression, jaw and the rigid parameters
    params = FlameParams.zeros(rig, 1, dtype=torch.float64)
    shape = torch.zeros(flame.num_shape, dtype=torch.float64, requires_grad=True)
    expr = torch.zeros(1, flame.num_expr, dtype=torch.float64, requires_grad=True)
    jaw = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    dtype = flame.v_template.dtype

    def model_landmarks() -> torch.Tensor:
        p = FlameParams(
            shape=shape, expr=expr, global_rot=params.global_rot, neck_pose=params.neck_pose,
            jaw_pose=jaw, eye_pose=params.eye_pose, transl=params.transl,
        )
        return rig(p).landmarks[0]

    def full_loss() -> torch.Tensor:
        reg = shape_prior * (shape * shape).sum() + expr_prior * (expr * expr).sum() + jaw_prior * (jaw * jaw).sum()
        return data_term(pose, model_landmarks()) + focal_term(pose) + reg

    final_loss = _lbfgs([shape, expr, jaw, *pose.parameters()], full_loss, steps, check)
    if not math.isfinite(final_loss):
        raise MVP4DError(
            "NO_FACE",
            "the head model could not be fitted to the detected face landmarks (the optimisation diverged)",
            "Use a sharper, more frontal photo of the face.",
        )
    if progress is not None:
        progress(total, total)

    # 3. canonical result: the head at identity pose, the camera holding the pose
    with torch.no_grad():
        R = pose.rotation()
        t = pose.translation(principal)
        focal = float(torch.exp(pose.log_f))
    w2c = np.eye(4)
    w2c[:3, :3] = R.numpy()
    w2c[:3, 3] = t.numpy() - R.numpy() @ pivot.numpy()
    camera = Camera(K=intrinsics(focal, width, height), world_to_cam=w2c, width=width, height=height, name="reference")
    fitted = FlameParams.zeros(flame.model, 1, dtype=dtype)  # on the CPU, whatever flame's device
    fitted.shape = shape.detach().to(dtype).clone()
    fitted.expr = expr.detach().to(dtype).clone()
    fitted.jaw_pose = jaw.detach().to(dtype).clone()
    with torch.no_grad():
        lm3d = flame(fitted.to(device=flame.device)).landmarks[0].cpu().numpy().astype(np.float64)
    projected, _ = camera.project(lm3d)
    errors = np.linalg.norm(projected - target_np, axis=1)
    mean_err = float(errors.mean())
    return TrackResult(
        params=fitted,
        camera=camera,
        landmark_ids=ids,
        landmarks_px=target_np,
        projected_px=projected,
        mean_error_px=mean_err,
        face_box_size_px=float(landmarks.box_size),
        relative_error=mean_err / max(float(landmarks.box_size), 1e-9),
        face=landmarks,
        model_id=flame.model_id,
        info={
            "rigid_loss": rigid_loss,
            "final_loss": final_loss,
            "focal_px": focal,
            "focal_init_px": f_init,
            "distance_m": float(np.linalg.norm(camera.center - pivot.numpy())),
        },
    )
