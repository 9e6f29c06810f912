"""FLAME in torch: parameters batched over frames, and linear blend skinning.

Standard FLAME (not CAP4D's variant): the pose correctives are fed with ``R_j - I`` of joints
1..J-1, global rotation and translation act through the root joint and a final offset, and joints
are regressed from the shaped *and expressed* vertices (FLAME concatenates shape and expression
coefficients before regressing). Everything is batched over T frames, which is how the pipeline
drives the head (an animation of 89 frames is one call).

Axis-angle vectors are radians (:func:`axis_angle_to_matrix`), lengths are metres.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Union

import numpy as np
import torch

from ..errors import MVP4DError
from ..protocol import ANIMATION_KEYS, FLAME_PARAM_KEYS
from .model import FlameModel

#: size of each pose vector (per frame)
POSE_SIZES: dict[str, int] = {"global_rot": 3, "neck_pose": 3, "jaw_pose": 3, "eye_pose": 6, "transl": 3}


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from axis-angle vectors ``(..., 3)`` (Rodrigues).

    ``R = I + A K + B K^2`` with ``K`` the cross-product matrix of the *unnormalised* vector,
    ``A = sin t / t`` and ``B = (1 - cos t) / t^2``. Near ``t = 0`` both come from their Taylor
    series, so the result and its gradient are exact and finite at zero (tracking starts there).
    """
    theta2 = (aa * aa).sum(-1, keepdim=True)  # (..., 1)
    small = theta2 < 1e-6
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(safe2)
    a = torch.where(small, 1.0 - theta2 / 6.0 + theta2 * theta2 / 120.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0 + theta2 * theta2 / 720.0, (1.0 - torch.cos(theta)) / safe2)
    x, y, z = aa.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*aa.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(k)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


@dataclass
class FlameParams:
    """FLAME parameters for T frames (torch tensors).

    ``shape (S,)`` is the identity shared by all frames; the rest are per frame:
    ``expr (T, E)``, ``global_rot (T, 3)``, ``neck_pose (T, 3)``, ``jaw_pose (T, 3)``,
    ``eye_pose (T, 6)`` (left eye then right eye; "left" is the subject's left, +x) and
    ``transl (T, 3)``.
    """

    shape: torch.Tensor
    expr: torch.Tensor
    global_rot: torch.Tensor
    neck_pose: torch.Tensor
    jaw_pose: torch.Tensor
    eye_pose: torch.Tensor
    transl: torch.Tensor

    @classmethod
    def zeros(
        cls, model: Union[FlameModel, "Flame"], num_frames: int = 1, dtype: torch.dtype = torch.float32
    ) -> "FlameParams":
        """Neutral parameters (mean identity, no expression, rest pose) for ``num_frames`` frames."""
        S, E, T = model.num_shape, model.num_expr, int(num_frames)
        device = model.device if isinstance(model, Flame) else torch.device("cpu")
        z = lambda *s: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
        return cls(
            shape=z(S),
            expr=z(T, E),
            global_rot=z(T, 3),
            neck_pose=z(T, 3),
            jaw_pose=z(T, 3),
            eye_pose=z(T, 6),
            transl=z(T, 3),
        )

    @property
    def num_frames(self) -> int:
        return int(self.expr.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "FlameParams":
        return FlameParams(**{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)})

    def detach(self) -> "FlameParams":
        return FlameParams(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def frame(self, i: int) -> "FlameParams":
        """Frame ``i`` as a one-frame FlameParams (same identity)."""
        s = slice(i, i + 1) if i != -1 else slice(-1, None)
        kw = {f.name: getattr(self, f.name)[s] for f in fields(self) if f.name != "shape"}
        return FlameParams(shape=self.shape, **kw)

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name).detach().cpu().numpy().astype(np.float32) for f in fields(self)}

    # ---- files -------------------------------------------------------------------------------

    def save_npz(self, path: str | os.PathLike, frame: int | None = None) -> None:
        """Write a parameter file.

        ``frame=i`` writes one frame with the keys of ``protocol.FLAME_PARAM_KEYS`` (per-frame
        values without the time axis); ``frame=None`` writes the whole sequence with the keys of
        ``protocol.ANIMATION_KEYS`` (``(T, ...)``) plus ``shape (S,)`` so identity survives.
        """
        arrays = self.to_numpy()
        if frame is not None:
            if not -self.num_frames <= frame < self.num_frames:
                raise MVP4DError("BAD_INPUT", f"frame {frame} is out of range for {self.num_frames} frames")
            out = {k: (arrays[k] if k == "shape" else arrays[k][frame]) for k in FLAME_PARAM_KEYS}
        else:
            out = {k: arrays[k] for k in ANIMATION_KEYS}
            out["shape"] = arrays["shape"]
        np.savez(Path(path), **out)

    @classmethod
    def load_npz(cls, path: str | os.PathLike, num_shape: int, num_expr: int) -> "FlameParams":
        """Read a one-frame (``FLAME_PARAM_KEYS``) or sequence (``ANIMATION_KEYS``) file.

        The file is a sequence when ``expr`` is 2-D. Missing keys default to zeros; shorter
        ``shape``/``expr`` vectors are zero-padded to the model's sizes (FLAME files with fewer
        components), longer ones are an error, as are unknown keys, wrong pose sizes, a frame
        count that differs between keys and non-finite values. Errors are ``BAD_INPUT`` naming
        the file and key.
        """
        p = Path(path)
        data, seq, T = read_param_arrays(p)

        def per_frame(k: str, size: int) -> np.ndarray:
            if k not in data:
                return np.zeros((T, size), np.float32)
            a = data[k]
            return _pad(a if seq else a[None], size, k, p.name)

        shape = data.get("shape", np.zeros(num_shape, np.float32))
        if shape.ndim != 1:
            raise MVP4DError("BAD_INPUT", f"{p.name}: shape has shape {shape.shape}, expected (S,)")
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        return cls(
            shape=t(_pad(shape[None], num_shape, "shape", p.name)[0]),
            expr=t(per_frame("expr", num_expr)),
            **{k: t(per_frame(k, n)) for k, n in POSE_SIZES.items()},
        )


#: Largest magnitude a FLAME parameter may have (radians, metres, coefficients): beyond it the file is broken.
MAX_PARAM_ABS = 1e3


def read_param_arrays(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], bool, int]:
    """Read and check a FLAME parameter / animation ``.npz`` without a head model: ``(arrays, is_sequence, T)``.

    Checked here, so a job can refuse the file before any stage runs: a plain npz (no pickle), known
    keys, ``expr`` present, real numbers (no complex, bool or text), finite and at most
    :data:`MAX_PARAM_ABS`, and per-frame shapes that agree on the frame count and the pose sizes.
    The component counts against the model are checked by :meth:`FlameParams.load_npz`.
    """
    p = Path(path)
    if not p.is_file():
        raise MVP4DError("BAD_INPUT", f"FLAME parameter file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as npz:
            data = {k: np.asarray(npz[k]) for k in npz.files}
    except Exception as e:  # zip/format/pickle errors: the file is not a plain npz
        raise MVP4DError(
            "BAD_INPUT", f"{p.name} is not a readable .npz of FLAME parameters ({type(e).__name__}: {e})"
        ) from e
    known = set(FLAME_PARAM_KEYS) | set(ANIMATION_KEYS)
    unknown = sorted(set(data) - known)
    if unknown:
        raise MVP4DError(
            "BAD_INPUT", f"{p.name}: unknown key {unknown[0]!r}", f"Use only these keys: {', '.join(sorted(known))}."
        )
    if "expr" not in data:
        raise MVP4DError("BAD_INPUT", f"{p.name}: key 'expr' is missing", "Every FLAME parameter file needs 'expr'.")
    for k, a in data.items():
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise MVP4DError("BAD_INPUT", f"{p.name}: {k} must hold finite numbers, real ones (got dtype {a.dtype})")
        if not np.isfinite(a).all():
            raise MVP4DError("BAD_INPUT", f"{p.name}: {k} must hold finite numbers")
        if a.size and float(np.abs(a).max()) > MAX_PARAM_ABS:
            raise MVP4DError("BAD_INPUT", f"{p.name}: {k} has values beyond +-{MAX_PARAM_ABS:g}",
                             "Export FLAME parameters in radians and metres.")
    seq = data["expr"].ndim == 2
    if data["expr"].ndim not in (1, 2):
        raise MVP4DError("BAD_INPUT", f"{p.name}: expr has shape {data['expr'].shape}, expected (E,) or (T, E)")
    T = data["expr"].shape[0] if seq else 1
    for k, a in data.items():
        if k == "shape":
            if a.ndim != 1:
                raise MVP4DError("BAD_INPUT", f"{p.name}: shape has shape {a.shape}, expected (S,)")
            continue
        b = a if seq else a[None]
        size = POSE_SIZES.get(k, b.shape[-1] if b.ndim else 0)
        if b.ndim != 2 or b.shape[0] != T or b.shape[1] != size:
            want = f"({T}, {size if k in POSE_SIZES else 'E'})" if seq else f"({size if k in POSE_SIZES else 'E'},)"
            raise MVP4DError("BAD_INPUT", f"{p.name}: {k} has shape {a.shape}, expected {want}")
    return data, seq, T


def _pad(a: np.ndarray, size: int, key: str, fname: str) -> np.ndarray:
    n = a.shape[-1]
    if n > size:
        raise MVP4DError(
            "BAD_INPUT",
            f"{fname}: {key} has {n} components but the head model has {size}",
            "Use parameters made for this head model (or a FLAME model with as many components).",
        )
    if n < size:
        a = np.concatenate([a, np.zeros((*a.shape[:-1], size - n), a.dtype)], axis=-1)
    return a.astype(np.float32)


@dataclass
class FlameOutput:
    """Posed geometry for T frames: ``vertices (T, V, 3)``, ``joints (T, J, 3)``, ``landmarks (T, L, 3)``."""

    vertices: torch.Tensor
    joints: torch.Tensor
    landmarks: torch.Tensor | None


class Flame(torch.nn.Module):
    """FLAME linear blend skinning over a :class:`FlameModel` (arrays become buffers)."""

    def __init__(self, model: FlameModel, dtype: torch.dtype = torch.float32):
        super().__init__()
        model.validate()
        self.model = model
        self.model_id = model.model_id
        V, J = model.num_vertices, model.num_joints
        f = lambda a: torch.as_tensor(np.array(a, dtype=np.float32), dtype=dtype)  # noqa: E731
        self.register_buffer("v_template", f(model.v_template))
        self.register_buffer("faces", torch.as_tensor(np.array(model.faces, dtype=np.int64)))
        # (V*3, K) so blendshapes are one matmul for all frames
        self.register_buffer("shapedirs", f(model.shapedirs).reshape(V * 3, -1))
        self.register_buffer("exprdirs", f(model.exprdirs).reshape(V * 3, -1))
        self.register_buffer("posedirs", f(model.posedirs).reshape(V * 3, -1))
        self.register_buffer("J_regressor", f(model.J_regressor))
        self.register_buffer("lbs_weights", f(model.lbs_weights))
        self.parents: list[int] = [int(p) for p in model.parents]
        if model.has_landmarks:
            self.register_buffer("landmark_faces", torch.as_tensor(np.array(model.landmark_faces, dtype=np.int64)))
            self.register_buffer("landmark_bary", f(model.landmark_bary))
            self.register_buffer("landmark_ids", torch.as_tensor(np.array(model.landmark_ids, dtype=np.int64)))
        else:
            self.landmark_faces = self.landmark_bary = self.landmark_ids = None
        self.num_joints = J

    # ---- sizes -------------------------------------------------------------------------------

    @property
    def num_shape(self) -> int:
        return int(self.shapedirs.shape[1])

    @property
    def num_expr(self) -> int:
        return int(self.exprdirs.shape[1])

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def device(self) -> torch.device:
        return self.v_template.device

    # ---- evaluation --------------------------------------------------------------------------

    def _coeffs(self, c: torch.Tensor, n: int, key: str) -> torch.Tensor:
        """Zero-pad shorter coefficient vectors (fewer components); longer ones are an error."""
        k = c.shape[-1]
        if k > n:
            raise MVP4DError("BAD_INPUT", f"FLAME parameters: {key} has {k} components, the model has {n}")
        if k < n:
            c = torch.nn.functional.pad(c, (0, n - k))
        return c.to(self.v_template.dtype)

    def neutral_vertices(self, shape: torch.Tensor | None = None) -> torch.Tensor:
        """Vertices ``(V, 3)`` with identity ``shape (S,)`` only: no expression, rest pose."""
        if shape is None:
            return self.v_template.clone()
        s = self._coeffs(shape.reshape(-1), self.num_shape, "shape")
        return self.v_template + (self.shapedirs @ s).reshape(-1, 3)

    def landmarks_from_vertices(self, vertices: torch.Tensor) -> torch.Tensor | None:
        """Landmarks ``(..., L, 3)`` on ``vertices (..., V, 3)`` through the barycentric embedding."""
        if self.landmark_faces is None:
            return None
        tri = vertices[..., self.faces[self.landmark_faces], :]  # (..., L, 3, 3)
        return (tri * self.landmark_bary[..., None]).sum(-2)

    def forward(self, params: FlameParams) -> FlameOutput:
        """Posed vertices, joints and landmarks for every frame of ``params``."""
        T = params.num_frames
        V, J = self.num_vertices, self.num_joints
        dtype = self.v_template.dtype
        shape = self._coeffs(params.shape.reshape(-1), self.num_shape, "shape")
        expr = self._coeffs(params.expr.reshape(T, -1), self.num_expr, "expr")
        # 1. blendshapes: identity once, expression per frame
        v_id = self.v_template + (self.shapedirs @ shape).reshape(V, 3)
        v_shaped = v_id[None] + (expr @ self.exprdirs.T).reshape(T, V, 3)
        # 2. joints from the shaped (and expressed) mesh
        joints = torch.einsum("jv,tvc->tjc", self.J_regressor, v_shaped)
        # 3. rotations per joint: [global, neck, jaw, eye_left, eye_right] (+ identity for extras)
        pose = torch.cat(
            [params.global_rot, params.neck_pose, params.jaw_pose, params.eye_pose], dim=-1
        ).to(dtype).reshape(T, -1, 3)
        if pose.shape[1] < J:
            pose = torch.cat([pose, pose.new_zeros(T, J - pose.shape[1], 3)], dim=1)
        rots = axis_angle_to_matrix(pose[:, :J])  # (T, J, 3, 3)
        # 4. pose correctives from (R - I) of joints 1..J-1
        if J > 1:
            eye3 = torch.eye(3, dtype=dtype, device=rots.device)
            feat = (rots[:, 1:] - eye3).reshape(T, -1)
            v_posed = v_shaped + (feat @ self.posedirs.T).reshape(T, V, 3)
        else:
            v_posed = v_shaped
        # 5. kinematic chain: world transform of each joint, then relative to its rest position
        world_r: list[torch.Tensor] = []
        world_t: list[torch.Tensor] = []
        for j in range(J):
            p = self.parents[j]
            if p < 0:
                world_r.append(rots[:, j])
                world_t.append(joints[:, j])
            else:
                local_t = joints[:, j] - joints[:, p]
                world_r.append(world_r[p] @ rots[:, j])
                world_t.append(world_t[p] + (world_r[p] @ local_t[..., None])[..., 0])
        R = torch.stack(world_r, dim=1)  # (T, J, 3, 3)
        posed_joints = torch.stack(world_t, dim=1)  # (T, J, 3)
        # transform taking a rest-pose point to its posed position, per joint
        t_rel = posed_joints - (R @ joints[..., None])[..., 0]
        A = torch.cat([R.reshape(T, J, 9), t_rel], dim=-1)  # (T, J, 12)
        # 6. skinning
        M = torch.einsum("vj,tjk->tvk", self.lbs_weights, A)  # (T, V, 12)
        Mr = M[..., :9].reshape(T, V, 3, 3)
        verts = (Mr @ v_posed[..., None])[..., 0] + M[..., 9:]
        # 7. translation
        transl = params.transl.to(dtype).reshape(T, 1, 3)
        verts = verts + transl
        posed_joints = posed_joints + transl
        return FlameOutput(vertices=verts, joints=posed_joints, landmarks=self.landmarks_from_vertices(verts))
