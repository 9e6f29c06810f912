"""FLAME head models in Blender's Python: read the backend's plain ``.npz`` and evaluate it in numpy.

Blender cannot unpickle FLAME ``.pkl`` files (chumpy, scipy.sparse) and must not import torch, so the
rig builder asks the backend interpreter once to write the model as an ``.npz``
(``python -m backend.blender_support export-flame``; the layout of ``backend.flame.save_flame_npz``)
and reads that here. :func:`flame_forward` is a numpy twin of ``backend.flame.lbs.Flame`` used to
fit head bounds and by the tests; the Blender rig reproduces it with shape keys and an armature.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .binding import axis_angle_to_quat, quat_to_matrix

JOINT_NAMES = ("root", "neck", "jaw", "eye_left", "eye_right")
_REQUIRED = ("v_template", "faces", "shapedirs", "exprdirs", "posedirs", "J_regressor", "parents", "lbs_weights")


class FlameFileError(ValueError):
    """The FLAME npz is missing a key or has a wrong shape (message names the key)."""


@dataclass
class FlameArrays:
    v_template: np.ndarray  # (V, 3) FLAME space, metres
    faces: np.ndarray  # (F, 3) int
    shapedirs: np.ndarray  # (V, 3, S)
    exprdirs: np.ndarray  # (V, 3, E)
    posedirs: np.ndarray  # (V, 3, 9 (J - 1))
    J_regressor: np.ndarray  # (J, V)
    parents: np.ndarray  # (J,)
    lbs_weights: np.ndarray  # (V, J)
    model_id: str = "unknown"
    expression_names: list[str] | None = None
    head_vertex_mask: np.ndarray | None = None

    @property
    def num_expr(self) -> int:
        return int(self.exprdirs.shape[2])

    @property
    def num_shape(self) -> int:
        return int(self.shapedirs.shape[2])

    @property
    def num_joints(self) -> int:
        return int(self.parents.shape[0])

    def joint_names(self) -> list[str]:
        return [JOINT_NAMES[j] if j < len(JOINT_NAMES) else f"joint{j}" for j in range(self.num_joints)]

    def expr_names(self) -> list[str]:
        names = self.expression_names
        if names and len(names) == self.num_expr:
            return list(names)
        return [f"exp{i:03d}" for i in range(self.num_expr)]

    def shaped(self, shape: np.ndarray | None) -> np.ndarray:
        """Neutral vertices (V, 3) with identity ``shape`` (zero-padded to the model's size)."""
        v = self.v_template.astype(np.float64)
        if shape is None or len(shape) == 0:
            return v
        s = _pad(np.asarray(shape, np.float64), self.num_shape)
        return v + np.einsum("vck,k->vc", self.shapedirs, s)

    def head_mask(self) -> np.ndarray:
        """Same rule as ``FlameModel.head_mask`` in the backend (the ring is framed on this)."""
        if self.head_vertex_mask is not None:
            return self.head_vertex_mask.astype(bool)
        mask = self.lbs_weights[:, 0] < 0.5
        if mask.sum() < 0.5 * len(mask):
            mask = np.ones(len(mask), dtype=bool)
        return mask

    def head_bounds(self, shape: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Centre and largest extent (metres) of the head proper, like ``stages.head_bounds``."""
        v = self.shaped(shape)[self.head_mask()]
        lo, hi = v.min(0), v.max(0)
        return (lo + hi) / 2.0, float((hi - lo).max())


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    if a.shape[-1] > n:
        raise FlameFileError(f"{a.shape[-1]} coefficients given but the model has {n}")
    if a.shape[-1] < n:
        a = np.concatenate([a, np.zeros((*a.shape[:-1], n - a.shape[-1]))], axis=-1)
    return a


def load_flame_npz(path: str | Path) -> FlameArrays:
    """Read a model written by ``backend.flame.save_flame_npz``; :class:`FlameFileError` if malformed."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            d = {k: np.asarray(z[k]) for k in z.files}
    except Exception as e:  # noqa: BLE001 - any reading failure means the same thing to the user
        raise FlameFileError(f"{p.name} is not a readable FLAME .npz ({type(e).__name__}: {e})") from e
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise FlameFileError(f"{p.name}: key {missing[0]!r} is missing")
    V = d["v_template"].shape[0]
    J = d["parents"].shape[0]
    checks = {"faces": (None, 3), "shapedirs": (V, 3, None), "exprdirs": (V, 3, None),
              "posedirs": (V, 3, 9 * (J - 1)), "J_regressor": (J, V), "lbs_weights": (V, J)}
    for k, shape in checks.items():
        a = d[k]
        if a.ndim != len(shape) or any(e is not None and e != s for s, e in zip(a.shape, shape)):
            raise FlameFileError(f"{p.name}: {k} has shape {a.shape}, expected {shape}")
    names = [str(s) for s in d["expression_names"].reshape(-1)] if "expression_names" in d else None
    return FlameArrays(
        v_template=d["v_template"].astype(np.float32), faces=d["faces"].astype(np.int64),
        shapedirs=d["shapedirs"].astype(np.float32), exprdirs=d["exprdirs"].astype(np.float32),
        posedirs=d["posedirs"].astype(np.float32), J_regressor=d["J_regressor"].astype(np.float32),
        parents=d["parents"].astype(np.int64), lbs_weights=d["lbs_weights"].astype(np.float32),
        model_id=str(d["model_id"].reshape(())) if "model_id" in d else "unknown",
        expression_names=names,
        head_vertex_mask=d["head_vertex_mask"].astype(bool) if "head_vertex_mask" in d else None,
    )


def flame_forward(m: FlameArrays, shape, expr, global_rot, neck_pose, jaw_pose, eye_pose, transl,
                  joints_from_expressed: bool = True) -> np.ndarray:
    """Posed vertices (V, 3) for one frame, numpy twin of ``backend.flame.lbs.Flame.forward``.

    ``joints_from_expressed=False`` regresses joints from the identity-only mesh, which is what a
    Blender armature with fixed bones does (the difference is the rig's only approximation).
    """
    v_id = m.shaped(shape)
    v_shaped = v_id + np.einsum("vck,k->vc", m.exprdirs, _pad(np.asarray(expr, np.float64), m.num_expr))
    joints = m.J_regressor.astype(np.float64) @ (v_shaped if joints_from_expressed else v_id)
    pose = np.concatenate([np.reshape(global_rot, 3), np.reshape(neck_pose, 3), np.reshape(jaw_pose, 3),
                           np.reshape(eye_pose, 6)]).reshape(-1, 3)
    J = m.num_joints
    if pose.shape[0] < J:
        pose = np.concatenate([pose, np.zeros((J - pose.shape[0], 3))])
    rots = quat_to_matrix(axis_angle_to_quat(pose[:J]))
    feat = (rots[1:] - np.eye(3)).reshape(-1)
    v_posed = v_shaped + np.einsum("vck,k->vc", m.posedirs, feat)
    world_r, world_t = [], []
    for j in range(J):
        p = int(m.parents[j])
        if p < 0:
            world_r.append(rots[j])
            world_t.append(joints[j])
        else:
            world_r.append(world_r[p] @ rots[j])
            world_t.append(world_t[p] + world_r[p] @ (joints[j] - joints[p]))
    R = np.stack(world_r)
    t_rel = np.stack(world_t) - np.einsum("jab,jb->ja", R, joints)
    A = np.concatenate([R.reshape(J, 9), t_rel], axis=1)
    M = m.lbs_weights.astype(np.float64) @ A
    verts = np.einsum("vab,vb->va", M[:, :9].reshape(-1, 3, 3), v_posed) + M[:, 9:]
    return verts + np.reshape(transl, (1, 3))
