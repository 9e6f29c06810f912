"""Numpy mirror of :mod:`backend.avatar.binding` (no torch): posing bundle Gaussians for exports.

The exporters, and the Blender add-on (which must not import torch), need the same triangle frame
and local -> world transform as the fit. This module is that transform in plain numpy, line for
line the formulas of :mod:`backend.avatar.binding` (a test checks the two agree to 1e-6); the
add-on's Geometry Nodes / numpy version is tested against it in turn.
"""

from __future__ import annotations

import numpy as np

__all__ = ["face_frames_np", "matrix_to_quat_np", "quat_multiply_np", "local_to_world_np"]

_EPS = 1e-12


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), _EPS)


def quat_multiply_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a (x) b of (..., 4) wxyz quaternions."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def matrix_to_quat_np(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation -> (..., 4) unit wxyz with w >= 0 (largest-square branch, as torch)."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    t = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    cand = np.stack(
        [
            np.stack([t[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
            np.stack([m21 - m12, t[..., 1], m01 + m10, m02 + m20], -1),
            np.stack([m02 - m20, m01 + m10, t[..., 2], m12 + m21], -1),
            np.stack([m10 - m01, m02 + m20, m12 + m21, t[..., 3]], -1),
        ],
        axis=-2,
    )
    best = np.argmax(t, axis=-1)[..., None]
    q = np.take_along_axis(cand, best[..., None], axis=-2)[..., 0, :]
    q = q / (2.0 * np.sqrt(np.maximum(np.take_along_axis(t, best, axis=-1), _EPS)))
    q = _normalize(q)
    return np.where(q[..., :1] < 0, -q, q)


def face_frames_np(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``R`` (..., F, 3, 3) columns a0, a1 (normal), a2; ``s`` (..., F); ``c`` (..., F, 3)."""
    faces = np.asarray(faces, dtype=np.int64)
    v0, v1, v2 = vertices[..., faces[:, 0], :], vertices[..., faces[:, 1], :], vertices[..., faces[:, 2], :]
    e1, e2 = v1 - v0, v2 - v0
    a0 = _normalize(e1)
    a1 = _normalize(np.cross(a0, e2))
    a2 = -_normalize(np.cross(a1, a0))
    R = np.stack([a0, a1, a2], axis=-1)
    s = 0.5 * (np.linalg.norm(e1, axis=-1) + np.abs(np.sum(a2 * e2, axis=-1)))
    c = (v0 + v1 + v2) / 3.0
    return R, s, c


def local_to_world_np(
    parent_face: np.ndarray,
    local_position: np.ndarray,
    local_rotation: np.ndarray,
    log_scale: np.ndarray,
    vertices: np.ndarray,
    faces: np.ndarray,
    detail_offsets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame: ``vertices`` (V, 3) -> world means (N, 3), unit wxyz quats (N, 4) and **log**
    scales (N, 3) (= log_scale + log s: exact for PLY export, no exp/log round trip).

    Opacity and SH do not depend on the pose (opacity logit and SH are exported as stored).
    Computed in float64 whatever the input dtype (bundle vertices are float16).
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    pf = np.asarray(parent_face, dtype=np.int64)
    R, s, c = face_frames_np(vertices, np.asarray(faces)[pf])
    xyz = np.asarray(local_position, dtype=np.float64)
    if detail_offsets is not None:
        xyz = xyz + np.asarray(detail_offsets, dtype=np.float64)
    means = s[:, None] * np.einsum("nij,nj->ni", R, xyz) + c
    q_local = _normalize(np.asarray(local_rotation, dtype=np.float64))
    quats = _normalize(quat_multiply_np(matrix_to_quat_np(R), q_local))
    log_scales = np.asarray(log_scale, dtype=np.float64) + np.log(np.maximum(s, 1e-30))[:, None]
    return means, quats, log_scales
