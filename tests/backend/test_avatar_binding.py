"""The triangle binding (backend/avatar/binding.py) and its numpy mirror, on the toy head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.avatar.binding import (
    LocalGaussians,
    WorldGaussians,
    face_frames,
    local_from_points,
    local_to_world,
    matrix_to_quat,
    nearest_faces,
    quat_multiply,
    quat_to_matrix,
    world_to_local,
)
from backend.avatar.binding_np import face_frames_np, local_to_world_np
from backend.flame import load_flame

D = torch.float64


@pytest.fixture(scope="module")
def head():
    m = load_flame("toy")
    return torch.tensor(m.v_template, dtype=D), torch.tensor(m.faces.astype(np.int64))


def random_rotation(gen: torch.Generator) -> torch.Tensor:
    q = torch.randn(4, generator=gen, dtype=D)
    return quat_to_matrix(q)


def random_local(num_faces: int, n: int, seed: int = 0) -> LocalGaussians:
    g = torch.Generator().manual_seed(seed)
    return LocalGaussians(
        parent_face=torch.randint(0, num_faces, (n,), generator=g),
        local_position=torch.randn(n, 3, generator=g, dtype=D) * 0.5,
        local_rotation=torch.randn(n, 4, generator=g, dtype=D) * 2.0,  # unnormalised on purpose
        log_scale=torch.randn(n, 3, generator=g, dtype=D) * 0.3 - 1.0,
        opacity_logit=torch.randn(n, generator=g, dtype=D),
        sh=torch.randn(n, 4, 3, generator=g, dtype=D),
    )


def same_rotation(qa: torch.Tensor, qb: torch.Tensor, atol: float) -> None:
    """Quaternions equal up to sign."""
    sign = torch.sign((qa * qb).sum(-1, keepdim=True))
    torch.testing.assert_close(qa, sign * qb, atol=atol, rtol=0)


def test_face_frame_is_orthonormal_right_handed_and_matches_the_formulas(head):
    V, F = head
    R, s, c = face_frames(V, F)
    eye = torch.eye(3, dtype=D).expand_as(R)
    torch.testing.assert_close(R.transpose(-1, -2) @ R, eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(len(F), dtype=D), atol=1e-12, rtol=0)
    v0, v1, v2 = V[F[:, 0]], V[F[:, 1]], V[F[:, 2]]
    e1, e2 = v1 - v0, v2 - v0
    torch.testing.assert_close(R[..., 0], e1 / e1.norm(dim=-1, keepdim=True))
    normal = torch.linalg.cross(e1, e2)
    torch.testing.assert_close(R[..., 1], normal / normal.norm(dim=-1, keepdim=True))  # a1 = triangle normal
    height = (e2 * R[..., 2]).sum(-1).abs()  # a2 lies in the plane, so this is the triangle's height
    torch.testing.assert_close(s, (e1.norm(dim=-1) + height) / 2)
    torch.testing.assert_close(c, (v0 + v1 + v2) / 3)
    assert (s > 0).all()


def test_matrix_to_quat_round_trips_including_half_turns():
    g = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(2000, 4, generator=g, dtype=D), dim=-1)
    # half turns (w = 0) and near-identity rotations are the classic failure cases
    q[:10, 0] = 0.0
    q[10:20] = torch.tensor([1.0, 1e-9, 0.0, 0.0], dtype=D)
    q = torch.nn.functional.normalize(q, dim=-1)
    back = matrix_to_quat(quat_to_matrix(q))
    same_rotation(back, q, atol=1e-12)
    assert (back[:, 0] >= 0).all()
    torch.testing.assert_close(quat_to_matrix(quat_multiply(q[:5], q[5:10])),
                               quat_to_matrix(q[:5]) @ quat_to_matrix(q[5:10]))


def test_gaussians_follow_a_rigid_motion_of_the_head_exactly(head):
    V, F = head
    local = random_local(len(F), 3000)
    g = torch.Generator().manual_seed(2)
    Rm, t = random_rotation(g), torch.randn(3, generator=g, dtype=D)
    a = local_to_world(local, V, F)
    b = local_to_world(local, V @ Rm.T + t, F)
    torch.testing.assert_close(b.means, a.means @ Rm.T + t, atol=1e-5, rtol=0)
    torch.testing.assert_close(quat_to_matrix(b.quats), Rm @ quat_to_matrix(a.quats), atol=1e-5, rtol=0)
    torch.testing.assert_close(b.scales, a.scales, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.opacities, a.opacities)
    assert b.sh is local.sh  # SH are never rotated


def test_uniform_scaling_scales_gaussian_sizes_and_offsets(head):
    V, F = head
    local = random_local(len(F), 500, seed=3)
    k = 1.7
    a = local_to_world(local, V, F)
    b = local_to_world(local, V * k, F)
    torch.testing.assert_close(b.means, a.means * k, atol=1e-12, rtol=0)
    torch.testing.assert_close(b.scales, a.scales * k)
    same_rotation(b.quats, a.quats, atol=1e-12)
    # the offset from the parent centroid scales with the triangle
    _, s, c = face_frames(V, F)
    pf = local.parent_face
    off = a.means - c[pf]
    torch.testing.assert_close(off.norm(dim=-1), s[pf] * local.local_position.norm(dim=-1))


def test_world_to_local_inverts_local_to_world(head):
    V, F = head
    local = random_local(len(F), 1000, seed=4)
    back = world_to_local(local_to_world(local, V, F), local.parent_face, V, F)
    torch.testing.assert_close(back.local_position, local.local_position)
    same_rotation(back.local_rotation, torch.nn.functional.normalize(local.local_rotation, dim=-1), atol=1e-12)
    torch.testing.assert_close(back.log_scale, local.log_scale)
    torch.testing.assert_close(back.opacity_logit, local.opacity_logit)


def test_batched_frames_and_detail_offsets(head):
    V, F = head
    local = random_local(len(F), 200, seed=5)
    g = torch.Generator().manual_seed(6)
    frames = V[None] + 0.002 * torch.randn(3, *V.shape, generator=g, dtype=D)
    off = 0.1 * torch.randn(3, 200, 3, generator=g, dtype=D)
    batch = local_to_world(local, frames, F, detail_offsets=off)
    assert batch.means.shape == (3, 200, 3) and batch.opacities.shape == (3, 200)
    for t in range(3):
        one = local_to_world(local, frames[t], F, detail_offsets=off[t])
        torch.testing.assert_close(batch.frame(t).means, one.means)
        torch.testing.assert_close(batch.frame(t).quats, one.quats)
    moved = LocalGaussians(local.parent_face, local.local_position + off[0], local.local_rotation,
                           local.log_scale, local.opacity_logit, local.sh)
    torch.testing.assert_close(batch.means[0], local_to_world(moved, frames[0], F).means)


def test_numpy_mirror_matches_torch(head):
    V, F = head
    local = random_local(len(F), 2000, seed=7)
    off = 0.05 * torch.randn(2000, 3, dtype=D, generator=torch.Generator().manual_seed(8))
    w = local_to_world(local, V, F, detail_offsets=off)
    means, quats, log_scales = local_to_world_np(
        local.parent_face.numpy(), local.local_position.numpy(), local.local_rotation.numpy(),
        local.log_scale.numpy(), V.numpy(), F.numpy(), detail_offsets=off.numpy())
    np.testing.assert_allclose(means, w.means.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(quats, w.quats.numpy(), atol=1e-6, rtol=0)  # same branch and sign rule
    np.testing.assert_allclose(np.exp(log_scales), w.scales.numpy(), atol=1e-6, rtol=1e-6)
    R, s, c = face_frames(V, F)
    Rn, sn, cn = face_frames_np(V.numpy(), F.numpy())
    np.testing.assert_allclose(Rn, R.numpy(), atol=1e-12)
    np.testing.assert_allclose(sn, s.numpy(), atol=1e-12)
    # float32 torch (what the fit runs) against float64 numpy (what the exporters run)
    w32 = local_to_world(local.to(dtype=torch.float32), V.float(), F)
    np.testing.assert_allclose(w32.means.numpy(), local_to_world(local, V, F).means.numpy(), atol=1e-5)


def test_nearest_faces_matches_trimesh_on_the_toy_head(head):
    trimesh = pytest.importorskip("trimesh")
    V, F = head
    g = torch.Generator().manual_seed(9)
    # points near the surface (what SfM gives) and a few far away
    idx = torch.randint(0, len(V), (150,), generator=g)
    pts = torch.cat([V[idx] + 0.01 * torch.randn(150, 3, generator=g, dtype=D),
                     0.3 * torch.randn(10, 3, generator=g, dtype=D)])
    face, dist = nearest_faces(pts, V, F, return_distance=True)
    # independent reference: trimesh's closest point on every triangle (brute force, numpy)
    tris = V.numpy()[F.numpy()]
    P, Fn = len(pts), len(F)
    closest = trimesh.triangles.closest_point(np.repeat(tris[None], P, 0).reshape(-1, 3, 3),
                                              np.repeat(pts.numpy(), Fn, 0))
    d_ref = np.linalg.norm(closest - np.repeat(pts.numpy(), Fn, 0), axis=-1).reshape(P, Fn)
    # trimesh's closest point is off by ~1e-8 m on a few sliver triangles (checked by dense sampling),
    # so compare at 1e-7 m (the head is 0.2 m wide); ours is never farther than trimesh's
    np.testing.assert_allclose(dist.numpy(), d_ref.min(1), atol=1e-7)
    assert np.all(dist.numpy() <= d_ref.min(1) + 1e-12)
    assert np.all(d_ref[np.arange(P), face.numpy()] <= d_ref.min(1) + 1e-7)
    unique = (np.sort(d_ref, 1)[:, 1] - d_ref.min(1)) > 1e-7  # no tie on a shared edge or vertex
    assert unique.sum() > 50
    np.testing.assert_array_equal(face.numpy()[unique], d_ref.argmin(1)[unique])


def test_local_from_points_puts_gaussians_at_the_points(head):
    V, F = head
    g = torch.Generator().manual_seed(10)
    pts = V[torch.randint(0, len(V), (50,), generator=g)] + 0.003 * torch.randn(50, 3, generator=g, dtype=D)
    local = local_from_points(pts, V, F, scale=0.002, opacity=0.3, sh_degree=1)
    w = local_to_world(local, V, F)
    torch.testing.assert_close(w.means, pts)
    torch.testing.assert_close(w.scales, torch.full((50, 3), 0.002, dtype=D))
    torch.testing.assert_close(w.opacities, torch.full((50,), 0.3, dtype=D))
    assert local.sh.shape == (50, 4, 3)
    torch.testing.assert_close(local.parent_face, nearest_faces(pts, V, F))


def test_gradients_reach_local_parameters_and_vertices(head):
    V, F = head
    local = random_local(len(F), 100, seed=11)
    for name in ("local_position", "local_rotation", "log_scale", "opacity_logit"):
        getattr(local, name).requires_grad_(True)
    verts = V.clone().requires_grad_(True)
    w = local_to_world(local, verts, F)
    (w.means.sum() + w.quats[:, 1:].sum() + w.scales.sum() + w.opacities.sum()).backward()
    for t in (local.local_position, local.local_rotation, local.log_scale, local.opacity_logit, verts):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_one_per_face_starts_at_the_centroids_with_the_triangle_size(head):
    V, F = head
    local = LocalGaussians.one_per_face(len(F), sh_degree=2, opacity=0.1, dtype=D)
    w = local_to_world(local, V, F)
    R, s, c = face_frames(V, F)
    torch.testing.assert_close(w.means, c)
    torch.testing.assert_close(w.scales, s[:, None].expand(-1, 3))
    torch.testing.assert_close(w.opacities, torch.full((len(F),), 0.1, dtype=D))
    assert local.sh_degree == 2 and len(local) == len(F)
    assert math.isclose(float(local.sh[0, 0, 0]), 0.0, abs_tol=1e-12)
    assert isinstance(w, WorldGaussians)
