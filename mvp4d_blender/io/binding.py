"""Triangle-bound Gaussians: the face frame and local -> world, in pure numpy (no bpy).

The add-on's mirror of the backend's ``backend/avatar/binding.py`` (GaussianAvatars form,
``reference/splats_flame_formats.md`` section 3.2). The Geometry Nodes group in
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

import numpy as np

_EPS = 1e-20


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), _EPS)


def face_frames(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotation (F, 3, 3) with columns a0, a1, a2, scale (F,) and centroid (F, 3) of each face."""
    v = np.asarray(vertices, dtype=np.float64)
    tri = v[np.asarray(faces, dtype=np.int64)]  # (F, 3, 3)
    v0, v1, v2 = tri[:, 0], tri[:, 1], tri[:, 2]
    e1, e2 = v1 - v0, v2 - v0
    a0 = _normalize(e1)
    a1 = _normalize(np.cross(a0, e2))
    a2 = -_normalize(np.cross(a1, a0))
    R = np.stack([a0, a1, a2], axis=-1)
    s = 0.5 * (np.linalg.norm(e1, axis=-1) + np.abs(np.einsum("fi,fi->f", a2, e2)))
    c = tri.mean(axis=1)
    return R, s, c


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
    """Hamilton product a (x) b for (..., 4) wxyz arrays (rotate by b first, then a)."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, np.float64), -1, 0)
    return np.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], axis=-1)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = np.moveaxis(quat_normalize(q), -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) wxyz with w >= 0 (branch-free pick)."""
    m = np.asarray(m, dtype=np.float64)
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # four candidate solutions; use the numerically largest denominator for each rotation
    cand = np.stack([
        np.stack([1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                  m[..., 1, 0] - m[..., 0, 1]], -1),
        np.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0],
                  m[..., 0, 2] + m[..., 2, 0]], -1),
        np.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22,
                  m[..., 1, 2] + m[..., 2, 1]], -1),
        np.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                  1 - m00 - m11 + m22], -1),
    ], -2)  # (..., 4, 4)
    diag = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = np.argmax(diag, axis=-1)
    q = np.take_along_axis(cand, best[..., None, None].repeat(4, -1), axis=-2)[..., 0, :]
    q = quat_normalize(q)
    return np.where(q[..., :1] < 0, -q, q)


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
