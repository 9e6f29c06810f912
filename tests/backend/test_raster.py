"""The torch mesh rasterizer (backend/render/raster.py) against analytic projections."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.cameras import Camera, look_at, orbit_camera, ring_preset, stack_K, stack_world_to_cam
from backend.errors import MVP4DError
from backend.render import interpolate, project_points, rasterize


def icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere, faces counter-clockwise seen from outside."""
    t = (1 + 5**0.5) / 2
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    v = [np.array(p, float) / np.linalg.norm(p) for p in verts]
    for _ in range(subdivisions):
        cache: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = v[a] + v[b]
                v.append(m / np.linalg.norm(m))
                cache[key] = len(v) - 1
            return cache[key]

        new = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new
    return np.array(v), np.array(faces)


def _cam(w=48, h=40, f=60.0, eye=(0.05, -0.03, 2.0), target=(0, 0, 0)) -> Camera:
    K = np.array([[f, 0, (w - 1) / 2 + 0.3], [0, f * 1.1, (h - 1) / 2 - 0.2], [0, 0, 1]])
    return Camera(K=K, world_to_cam=look_at(eye, target), width=w, height=h)


def _render(cams, verts, faces, **kw):
    cams = list(cams)
    v = torch.as_tensor(verts, dtype=torch.float32)
    if v.ndim == 2:
        v = v[None].expand(len(cams), -1, -1)
    return rasterize(v, torch.as_tensor(faces), stack_world_to_cam(cams), stack_K(cams),
                     cams[0].height, cams[0].width, **kw)


def _inside_analytic(cam: Camera, tri: np.ndarray):
    """Pixel centres strictly inside the projected triangle, and their distance to its edges."""
    uv, _ = cam.project(tri)
    jj, ii = np.meshgrid(np.arange(cam.width), np.arange(cam.height))
    p = np.stack([jj, ii], -1).astype(np.float64)
    d = []
    for a, b in ((0, 1), (1, 2), (2, 0)):
        e = uv[b] - uv[a]
        n = np.array([-e[1], e[0]]) / np.linalg.norm(e)
        d.append((p - uv[a]) @ n)
    d = np.stack(d, -1)
    inside = (d > 0).all(-1) | (d < 0).all(-1)
    return inside, np.abs(d).min(-1)


# A front-facing triangle for _cam(): counter-clockwise seen from the camera (outward normal +z).
TRI = np.array([[-0.61, -0.43, 0.05], [0.57, -0.31, -0.12], [-0.07, 0.52, 0.21]])


def test_project_points_matches_camera():
    cams = [_cam(), orbit_camera(40, 10, focal_px=80, resolution=(48, 40))]
    pts = np.random.default_rng(0).normal(scale=0.3, size=(10, 3))
    out = project_points(torch.tensor(pts)[None].expand(2, -1, -1), stack_world_to_cam(cams, dtype=torch.float64),
                         stack_K(cams, dtype=torch.float64))
    for b, cam in enumerate(cams):
        uv, z = cam.project(pts)
        np.testing.assert_allclose(out[b, :, :2].numpy(), uv, atol=1e-9)
        np.testing.assert_allclose(out[b, :, 2].numpy(), z, atol=1e-12)


def test_single_triangle_coverage_and_depth():
    cam = _cam()
    frag = _render([cam], TRI, [[0, 1, 2]])
    assert frag.face_id.shape == (1, cam.height, cam.width) and frag.face_id.dtype == torch.int64
    inside, dist = _inside_analytic(cam, TRI)
    covered = frag.mask[0].numpy()
    assert inside.sum() > 200
    # identical coverage except (possibly) for pixel centres within 1e-4 px of an edge
    differ = covered != inside
    assert not (differ & (dist > 1e-4)).any()
    # camera z at the pixel centres: ray / triangle-plane intersection
    _, d = cam.rays()
    o = cam.center
    n = np.cross(TRI[1] - TRI[0], TRI[2] - TRI[0])
    tt = ((TRI[0] - o) @ n) / (d @ n)
    z_true = (o + tt[..., None] * d) @ cam.world_to_cam[2, :3] + cam.world_to_cam[2, 3]
    m = covered
    np.testing.assert_allclose(frag.depth[0].numpy()[m], z_true[m], rtol=1e-5)
    assert (frag.depth[0].numpy()[~m] == 0).all()  # background depth is 0
    assert (frag.face_id[0].numpy()[~m] == -1).all() and (frag.bary[0].numpy()[~m] == 0).all()
    # perspective-correct interpolation of the vertices' camera z reproduces the depth
    zc = (TRI @ cam.world_to_cam[:3, :3].T + cam.world_to_cam[:3, 3])[:, 2:3]
    zi = interpolate(frag, torch.tensor([[0, 1, 2]]), torch.tensor(zc, dtype=torch.float32))[0, ..., 0]
    np.testing.assert_allclose(zi.numpy()[m], z_true[m], rtol=1e-5)
    # screen-space barycentrics do not (the triangle is tilted), but the depth stays exact
    frag2 = _render([cam], TRI, [[0, 1, 2]], perspective_correct=False)
    zi2 = interpolate(frag2, torch.tensor([[0, 1, 2]]), torch.tensor(zc, dtype=torch.float32))[0, ..., 0]
    assert np.abs(zi2.numpy()[m] - z_true[m]).max() > 1e-4
    np.testing.assert_allclose(frag2.depth[0].numpy()[m], z_true[m], rtol=1e-5)
    b = frag.bary[0].numpy()[m]
    np.testing.assert_allclose(b.sum(-1), 1.0, atol=1e-5)
    assert b.min() > -1e-5


def test_quad_has_no_cracks_or_overlaps():
    # a square split along its diagonal: every pixel centre inside the square is covered once
    cam = _cam(w=32, h=32, f=40, eye=(0.013, 0.021, 1.5))
    quad = np.array([[-0.47, -0.41, 0], [0.43, -0.41, 0], [0.43, 0.49, 0], [-0.47, 0.49, 0]], dtype=float)
    faces = [[0, 1, 2], [0, 2, 3]]
    frag = _render([cam], quad, faces)
    in0, d0 = _inside_analytic(cam, quad[[0, 1, 2]])
    in1, d1 = _inside_analytic(cam, quad[[0, 2, 3]])
    inside = in0 | in1
    safe = np.minimum(np.where(in0, 1, d0), np.where(in1, 1, d1)) > 1e-4  # away from the outer edges
    covered = frag.mask[0].numpy()
    assert (covered == inside)[safe].all() and covered.sum() > 300
    fid = frag.face_id[0].numpy()
    assert set(np.unique(fid[covered])) == {0, 1}


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_zbuffer_picks_nearest(order):
    cam = _cam()
    near = TRI + [0.05, 0.02, 0.3]  # closer to the camera at z = 2
    far = TRI * 1.5 + [-0.05, 0, -0.3]
    verts = np.concatenate([near, far])
    faces = np.array([[0, 1, 2], [3, 4, 5]])[list(order)]
    frag = _render([cam], verts, faces)
    near_id = order.index(0)
    in_near, dn = _inside_analytic(cam, near)
    in_far, df = _inside_analytic(cam, far)
    fid = frag.face_id[0].numpy()
    both = in_near & in_far & (dn > 1e-4) & (df > 1e-4)
    assert both.sum() > 100 and (fid[both] == near_id).all()
    only_far = in_far & ~in_near & (dn > 1e-4) & (df > 1e-4)
    assert only_far.sum() > 0 and (fid[only_far] == 1 - near_id).all()


def test_backface_culling():
    cam = _cam()
    flipped = [[0, 2, 1]]
    assert not _render([cam], TRI, flipped).mask.any()
    frag = _render([cam], TRI, flipped, cull_backfaces=False)
    front = _render([cam], TRI, [[0, 1, 2]])
    assert torch.equal(frag.mask, front.mask)
    torch.testing.assert_close(frag.depth, front.depth)
    # barycentrics follow the face's vertex order
    torch.testing.assert_close(frag.bary[..., [0, 2, 1]], front.bary)


def test_sphere_silhouette_and_culling_sign():
    v, f = icosphere(3)
    r, dist = 0.5, 2.0
    cam = Camera(K=np.array([[80.0, 0, 31.5], [0, 80.0, 31.5], [0, 0, 1]]), world_to_cam=look_at((0, 0, dist), (0, 0, 0)),
                 width=64, height=64)
    frag = _render([cam], v * r, f)
    R = 80.0 * r / math.sqrt(dist**2 - r**2)  # projected radius of the true sphere's silhouette
    area = frag.mask.sum().item()
    assert area == pytest.approx(math.pi * R**2, rel=0.04)
    # no holes inside the silhouette
    jj, ii = np.meshgrid(np.arange(64), np.arange(64))
    disk = (jj - 31.5) ** 2 + (ii - 31.5) ** 2 < (R - 2) ** 2
    assert frag.mask[0].numpy()[disk].all()
    # outward counter-clockwise faces: culling keeps the near side
    centre = frag.depth[0, 31:33, 31:33].mean().item()
    assert centre == pytest.approx(dist - r, rel=0.01)
    no_cull = _render([cam], v * r, f, cull_backfaces=False)
    assert torch.equal(no_cull.mask, frag.mask)
    torch.testing.assert_close(no_cull.depth, frag.depth)
    # inward-facing (flipped) faces: culling now keeps the far side
    inside_out = _render([cam], v * r, f[:, [0, 2, 1]])
    assert inside_out.depth[0, 31:33, 31:33].mean().item() == pytest.approx(dist + r, rel=0.01)


def test_batch_equals_separate_calls_and_chunking():
    v, f = icosphere(2)
    ring = ring_preset("tiny", resolution=48, focal_px=100, distance=1.5)
    cams = ring.cameras
    rng = np.random.default_rng(0)
    verts = torch.tensor(v * 0.4 + rng.normal(scale=0.01, size=v.shape), dtype=torch.float32)
    verts = torch.stack([verts * (1 + 0.05 * i) for i in range(len(cams))])  # per-image vertices
    batch = _render(cams, verts, f)
    assert batch.mask.any(dim=(1, 2)).all()
    for i, cam in enumerate(cams):
        one = _render([cam], verts[i : i + 1], f)
        assert torch.equal(one.face_id[0], batch.face_id[i])
        torch.testing.assert_close(one.bary[0], batch.bary[i])
        torch.testing.assert_close(one.depth[0], batch.depth[i])
    small = _render(cams, verts, f, chunk_size=257)
    assert torch.equal(small.face_id, batch.face_id)
    # (V, C) and (B, V, C) attributes agree
    attr = torch.randn(len(v), 5)
    a = interpolate(batch, torch.as_tensor(f), attr)
    b = interpolate(batch, torch.as_tensor(f), attr[None].expand(len(cams), -1, -1))
    assert a.shape == (len(cams), 48, 48, 5)
    torch.testing.assert_close(a, b)
    assert (a[~batch.mask] == 0).all()


def test_faces_behind_or_straddling_the_camera_are_dropped():
    cam = _cam()
    behind = np.array([[0, 0, 3.0], [0.1, 0, 3.0], [0, 0.1, 3.0]])  # camera at z ~ 2 looks towards -z
    straddle = np.array([[0, 0, 2.5], [0.1, 0, 0.0], [0, 0.1, 0.0]])
    verts = np.concatenate([behind, straddle, TRI])
    frag = _render([cam], verts, [[0, 1, 2], [0, 2, 1], [3, 4, 5], [3, 5, 4], [6, 7, 8]], cull_backfaces=False)
    assert set(np.unique(frag.face_id.numpy())) <= {-1, 4}


def test_gradients_flow_to_vertices_and_attributes():
    v, f = icosphere(1)
    cams = [orbit_camera(a, 10, distance=2.0, focal_px=60, resolution=32) for a in (0, 50)]
    verts = torch.tensor(v * 0.6, dtype=torch.float32).requires_grad_(True)
    colors = torch.rand(len(v), 3, requires_grad=True)
    frag = rasterize(verts[None].expand(2, -1, -1), torch.as_tensor(f), stack_world_to_cam(cams), stack_K(cams), 32, 32)
    img = interpolate(frag, torch.as_tensor(f), colors)
    loss = (img * torch.linspace(0, 1, 32)[None, None, :, None]).sum() + frag.depth.sum()
    loss.backward()
    assert torch.isfinite(verts.grad).all() and verts.grad.abs().sum() > 0
    assert torch.isfinite(colors.grad).all() and colors.grad.abs().sum() > 0


def test_bad_shapes():
    cam = _cam()
    with pytest.raises(MVP4DError):
        rasterize(torch.zeros(2, 3, 3), torch.tensor([[0, 1, 2]]), stack_world_to_cam([cam]), stack_K([cam]), 8, 8)
    with pytest.raises(MVP4DError):
        _render([cam], TRI, [[0, 1, 3]])


def test_empty_inputs():
    cam = _cam()
    frag = _render([cam], TRI, np.zeros((0, 3), dtype=np.int64))
    assert not frag.mask.any() and frag.bary.shape == (1, cam.height, cam.width, 3)
    out = interpolate(frag, torch.zeros(0, 3, dtype=torch.long), torch.ones(3, 2))
    assert out.shape == (1, cam.height, cam.width, 2) and (out == 0).all()


def test_a_full_ring_batch_matches_the_analytic_silhouette_and_depth():
    # a realistic batch (20k faces, the 360 ring's 48 cameras at 128 px) in one call, checked image by
    # image: a sphere of radius r at distance d projects to a disc of radius f r / sqrt(d^2 - r^2)
    # around the principal point, and its nearest surface point is at depth d - r
    v, f = icosphere(5)
    r, d, focal = 0.15, 1.0, 380.0
    cams = ring_preset("360", resolution=128, distance=d, focal_px=focal).cameras
    assert len(cams) == 48 and len(f) == 20480
    verts = torch.tensor(v * r, dtype=torch.float32)[None].expand(len(cams), -1, -1)
    frag = rasterize(verts, torch.as_tensor(f), stack_world_to_cam(cams), stack_K(cams), 128, 128)
    disc = math.pi * (focal * r / math.sqrt(d * d - r * r)) ** 2
    area = frag.mask.flatten(1).sum(1).float()
    assert torch.all((area - disc).abs() < 0.03 * disc), (area.min().item(), area.max().item(), disc)
    nearest = torch.where(frag.mask, frag.depth, torch.full_like(frag.depth, 1e9)).flatten(1).min(1).values
    torch.testing.assert_close(nearest, torch.full_like(nearest, d - r), atol=2e-3, rtol=0)
