"""Triangle-bound Gaussians: the face frame and local -> world, in pure numpy (no bpy).

The face frame, the Hamilton product and matrix -> quaternion are the backend's own
``backend/avatar/binding_np.py`` (torch-free, imported through :mod:`..backend_link`): one definition.
This module adds what only the add-on needs (axis-angle, the display relabelling) on top. It follows
``backend/avatar/binding.py`` (GaussianAvatars form; docs/architecture.md, "Triangle-bound
Gaussians"). The Geometry Nodes group in
``blender/nodes.py`` computes the same thing per frame; this module is the oracle the tests compare
it with, and what the exporters use. For triangle (v0, v1, v2)::

    a0 = normalize(v1 - v0)
    a1 = normalize(a0 x (v2 - v0))             (the normal)
    a2 = -normalize(a1 x a0)
    R  = [a0 a1 a2] (columns),  s = (|v1 - v0| + |a2 . (v2 - v0)|) / 2,  c = (v0 + v1 + v2) / 3
    world position = s R local + c;  rotation = q(R) (x) q_local;  scale = exp(log_scale) s

Quaternions are wxyz (Hamilton product) everywhere in this package.
"""

from __future__ import annotations

import importlib

import numpy as np

from .. import backend_link

_EPS = 1e-20


def _backend():
    """``backend.avatar.binding_np`` from the backend copy the add-on ships (no torch)."""
    backend_link.protocol()  # loads the private backend package
    return importlib.import_module(f"{backend_link._PRIVATE}.avatar.binding_np")


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), _EPS)


def face_frames(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotation (F, 3, 3) with columns a0, a1, a2, scale (F,) and centroid (F, 3) of each face (the backend's)."""
    return _backend().face_frames_np(np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64))


def local_to_world(vertices: np.ndarray, faces: np.ndarray, parent_face: np.ndarray, local_position: np.ndarray,
                   local_rotation: np.ndarray | None = None, log_scale: np.ndarray | None = None,
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """World positions (N, 3), rotations wxyz (N, 4) and linear scales (N, 3) of bound Gaussians."""
    R, s, c = face_frames(vertices, faces)
    pf = np.asarray(parent_face, dtype=np.int64)
    Rn, sn = R[pf], s[pf]
    pos = sn[:, None] * np.einsum("nij,nj->ni", Rn, np.asarray(local_position, np.float64)) + c[pf]
    rot = None
    if local_rotation is not None:
        rot = quat_multiply(matrix_to_quat(Rn), quat_normalize(np.asarray(local_rotation, np.float64)))
    scale = None
    if log_scale is not None:
        scale = np.exp(np.asarray(log_scale, np.float64)) * sn[:, None]
    return pos, rot, scale


# ---------------------------------------------------------------------------------------------
# Quaternions (wxyz) and axis-angle
# ---------------------------------------------------------------------------------------------


def quat_normalize(q: np.ndarray) -> np.ndarray:
    return _normalize(np.asarray(q, dtype=np.float64))


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a (x) b for (..., 4) wxyz arrays (rotate by b first, then a); the backend's."""
    return _backend().quat_multiply_np(np.asarray(a, np.float64), np.asarray(b, np.float64))


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = np.moveaxis(quat_normalize(q), -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) wxyz with w >= 0; the backend's."""
    return _backend().matrix_to_quat_np(np.asarray(m, dtype=np.float64))


def axis_angle_to_quat(aa: np.ndarray) -> np.ndarray:
    aa = np.asarray(aa, dtype=np.float64)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)
    half = 0.5 * theta
    # sin(t/2)/t -> 1/2 as t -> 0
    k = np.where(theta > 1e-8, np.sin(half) / np.maximum(theta, 1e-300), 0.5 - theta * theta / 48.0)
    return np.concatenate([np.cos(half), aa * k], axis=-1)


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    q = quat_normalize(q)
    q = np.where(q[..., :1] < 0, -q, q)
    w = np.clip(q[..., :1], -1.0, 1.0)
    v = q[..., 1:]
    s = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, w)
    k = np.where(s > 1e-8, angle / np.maximum(s, 1e-300), 2.0 / np.maximum(w, 1e-300))
    return v * k


def smallest_axis_last(local_rotation: np.ndarray, log_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same Gaussians with their axes permuted so the smallest scale is local z.

    A Gaussian is unchanged by relabelling its axes together with its rotation (cyclic shifts keep
    the handedness), so a display quad lying in the local xy plane then covers the two largest axes.
    """
    ls = np.asarray(log_scale, dtype=np.float64)
    q = quat_normalize(local_rotation)
    shift = (np.argmin(ls, axis=1) + 1) % 3  # cyclic shift that moves the smallest axis to z
    out_s = ls.copy()
    out_q = q.copy()
    # cyclic relabelling (x, y, z) -> (y, z, x) is a rotation of -120 degrees about (1, 1, 1)
    r1 = np.array([0.5, 0.5, 0.5, 0.5])  # +120 degrees about (1,1,1): maps x->y, y->z, z->x
    for k, qs in ((1, r1), (2, quat_multiply(r1, r1))):
        m = shift == k
        if m.any():
            out_s[m] = np.roll(ls[m], -k, axis=1)
            out_q[m] = quat_multiply(q[m], qs)
    return out_q, out_s
