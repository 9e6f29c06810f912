"""Gaussian rasterization (backend/render/gaussians.py): the CPU path against analytic footprints,
compositing order, gradients; the CUDA path against the CPU path where a GPU exists."""

from __future__ import annotations

import math
import time

import pytest
import torch

from backend.avatar.binding import quat_to_matrix
from backend.render.gaussians import SH_C0, rasterize, rgb_to_sh

D = torch.float64


def camera(W: int = 40, H: int = 30, f: float = 50.0, cx: float = 20.3, cy: float = 14.7, dtype=D):
    K = torch.tensor([[[f, 0, cx], [0, f, cy], [0, 0, 1]]], dtype=dtype)
    return torch.eye(4, dtype=dtype)[None], K, W, H


def splats(points, sigma, opacity, rgb, dtype=D):
    n = len(points)
    return dict(
        means=torch.tensor(points, dtype=dtype),
        quats=torch.tensor([[1.0, 0, 0, 0]] * n, dtype=dtype),
        scales=torch.tensor(sigma, dtype=dtype).reshape(-1, 1).expand(n, 3).clone(),
        opacities=torch.tensor(opacity, dtype=dtype),
        colors=torch.tensor(rgb, dtype=dtype),
    )


def render(s, cam, **kw):
    V, K, W, H = cam
    return rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], V, K, W, H,
                     backend=kw.pop("backend", "torch"), **kw)


def footprint(cam, u0, v0, var, opacity):
    """o exp(-d^2 / 2 var) at integer pixel centres, zero where gsplat drops alpha < 1/255."""
    _, _, W, H = cam
    j, i = torch.arange(W, dtype=D), torch.arange(H, dtype=D)
    a = opacity * torch.exp(-0.5 * ((j[None] - u0) ** 2 + (i[:, None] - v0) ** 2) / var)
    return torch.where(a >= 1 / 255, a, torch.zeros((), dtype=D))


def test_single_gaussian_renders_the_analytic_footprint_at_the_projected_centre():
    cam = camera()
    z, sigma, o = 2.0, 0.1, 0.8
    s = splats([[0.0, 0.0, z]], [sigma], [o], [[1.0, 0.2, 0.0]])
    out = render(s, cam, background=(0.0, 0.0, 1.0))
    var = (50.0 * sigma / z) ** 2 + 0.3  # focal * scale / depth, plus gsplat's eps2d blur
    expect = footprint(cam, 20.3, 14.7, var, o)  # on the optical axis: projects to (cx, cy)
    torch.testing.assert_close(out.alpha[0, ..., 0], expect, atol=1e-12, rtol=0)
    colour = torch.tensor([1.0, 0.2, 0.0], dtype=D)
    bg = torch.tensor([0.0, 0.0, 1.0], dtype=D)
    torch.testing.assert_close(out.rgb[0], expect[..., None] * colour + (1 - expect[..., None]) * bg)
    # peak and width measured from the image itself
    a = out.alpha[0, ..., 0]
    i, j = divmod(int(a.argmax()), a.shape[1])
    assert (i, j) == (15, 20)
    w = a / a.sum()
    jj, ii = torch.meshgrid(torch.arange(40, dtype=D), torch.arange(30, dtype=D), indexing="xy")
    mu_u, mu_v = (w * jj).sum(), (w * ii).sum()
    assert abs(mu_u - 20.3) < 0.02 and abs(mu_v - 14.7) < 0.02
    sig_px = math.sqrt(float((w * (jj - mu_u) ** 2).sum()))
    assert abs(sig_px - math.sqrt(var)) < 0.05 * math.sqrt(var)  # truncation at 1/255 narrows it a little
    # depth where covered is the Gaussian's camera z; 0 where empty
    assert torch.allclose(out.depth[0, ..., 0][expect > 0], torch.tensor(z, dtype=D))
    assert (out.depth[0, ..., 0][expect == 0] == 0).all()
    assert out.visible.tolist() == [[True]] and out.radii.shape == (1, 1, 2)


def test_anisotropic_rotated_gaussian_matches_the_projected_covariance():
    cam = camera(cx=19.5, cy=15.0)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, generator=g, dtype=D)
    sc = torch.tensor([[0.05, 0.12, 0.02]], dtype=D)
    s = dict(means=torch.tensor([[0.0, 0.0, 2.0]], dtype=D), quats=q, scales=sc,
             opacities=torch.tensor([0.9], dtype=D), colors=torch.ones(1, 3, dtype=D))
    out = render(s, cam)
    Rm = quat_to_matrix(q)[0]
    cov3 = Rm @ torch.diag(sc[0] ** 2) @ Rm.T
    J = torch.tensor([[25.0, 0, 0], [0, 25.0, 0]], dtype=D)  # f / z at the optical axis (x = y = 0)
    cov2 = J @ cov3 @ J.T + 0.3 * torch.eye(2, dtype=D)
    j, i = torch.arange(40, dtype=D), torch.arange(30, dtype=D)
    d = torch.stack(torch.broadcast_tensors(j[None] - 19.5, i[:, None] - 15.0), -1)
    m = torch.einsum("hwi,ij,hwj->hw", d, torch.linalg.inv(cov2), d)
    expect = 0.9 * torch.exp(-0.5 * m)
    expect = torch.where(expect >= 1 / 255, expect, torch.zeros((), dtype=D))
    torch.testing.assert_close(out.alpha[0, ..., 0], expect, atol=1e-12, rtol=0)


def test_two_gaussians_occlude_in_depth_order():
    cam = camera()
    red, blue = [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]
    front_red = splats([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0]], [0.1, 0.15], [0.9, 0.9], [red, blue])
    front_blue = splats([[0.0, 0.0, 3.0], [0.0, 0.0, 2.0]], [0.15, 0.1], [0.9, 0.9], [red, blue])
    a = render(front_red, cam, background=(1.0, 1.0, 1.0)).rgb[0, 15, 20]
    b = render(front_blue, cam, background=(1.0, 1.0, 1.0)).rgb[0, 15, 20]
    assert a[0] > 0.85 and a[2] < 0.15  # red in front
    assert b[2] > 0.85 and b[0] < 0.15  # blue in front
    # exact front-to-back compositing at the centre pixel (distance (0.3, 0.3) px from both means)
    d2 = 0.3**2 + 0.3**2
    a1 = 0.9 * math.exp(-0.5 * d2 / ((50 * 0.1 / 2) ** 2 + 0.3))
    a2 = 0.9 * math.exp(-0.5 * d2 / ((50 * 0.15 / 3) ** 2 + 0.3))
    expect = [a1, 0.0, (1 - a1) * a2]
    expect = [e + (1 - a1) * (1 - a2) for e in expect]
    torch.testing.assert_close(a, torch.tensor(expect, dtype=D))
    out = render(front_red, cam)
    exp_depth = (a1 * 2.0 + (1 - a1) * a2 * 3.0) / (1 - (1 - a1) * (1 - a2))
    torch.testing.assert_close(out.depth[0, 15, 20, 0], torch.tensor(exp_depth, dtype=D))
    torch.testing.assert_close(out.alpha[0, 15, 20, 0], torch.tensor(1 - (1 - a1) * (1 - a2), dtype=D))


def test_opaque_stack_stops_like_gsplat_and_background_per_camera():
    """Many opaque layers: transmittance stops at 1e-4 (gsplat's early stop, alpha capped at
    0.999); a per-camera background is blended by the final transmittance."""
    cam = camera()
    n = 8
    s = splats([[0.0, 0.0, 2.0 + 0.1 * k] for k in range(n)], [0.2] * n, [1.0] * n, [[0.2, 0.4, 0.6]] * n)
    V, K, W, H = cam
    out = rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], V.expand(2, 4, 4),
                    K.expand(2, 3, 3), W, H, background=torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=D),
                    backend="torch")
    # centre pixel: the first layer leaves T = 1 - a1 ~ 4e-3, the second would take it below 1e-4, so
    # gsplat stops there (exclusive) and every later layer is ignored
    a1 = math.exp(-0.5 * (0.3**2 + 0.3**2) / ((50 * 0.2 / 2.0) ** 2 + 0.3))
    torch.testing.assert_close(out.alpha[:, 15, 20, 0], torch.full((2,), a1, dtype=D))
    torch.testing.assert_close(out.rgb[0, 15, 20], a1 * torch.tensor([0.2, 0.4, 0.6], dtype=D)
                               + (1 - a1) * torch.tensor([1.0, 0, 0], dtype=D))
    torch.testing.assert_close(out.depth[0, 15, 20, 0], torch.tensor(2.0, dtype=D))
    # far from the splats the background shows, per camera
    torch.testing.assert_close(out.rgb[1, 0, 0], torch.tensor([0.0, 1.0, 0.0], dtype=D))


def test_sh_degree_0_equals_rgb_and_degree_1_is_view_dependent():
    g = torch.Generator().manual_seed(1)
    n = 30
    means = torch.randn(n, 3, generator=g, dtype=D) * 0.3 + torch.tensor([0, 0, 3.0], dtype=D)
    base = dict(means=means, quats=torch.randn(n, 4, generator=g, dtype=D),
                scales=torch.rand(n, 3, generator=g, dtype=D) * 0.05 + 0.02,
                opacities=torch.rand(n, generator=g, dtype=D) * 0.8 + 0.1)
    rgb = torch.rand(n, 3, generator=g, dtype=D)
    cam = camera()
    a = render(dict(base, colors=rgb), cam)
    b = render(dict(base, colors=rgb_to_sh(rgb)[:, None, :]), cam)
    torch.testing.assert_close(a.rgb, b.rgb, atol=1e-12, rtol=0)
    # degree 1: colour = 0.5 + C0 dc + C1 (-y, z, -x) . coeffs, direction from the camera centre
    sh = torch.randn(n, 4, 3, generator=g, dtype=D) * 0.2
    V = cam[0].clone()
    V[0, :3, 3] = torch.tensor([0.1, -0.2, 0.3], dtype=D)  # camera centre at -t
    d = torch.nn.functional.normalize(means + V[0, :3, 3], dim=-1)
    C1 = 0.4886025119029199
    basis = torch.stack([-C1 * d[:, 1], C1 * d[:, 2], -C1 * d[:, 0]], -1)
    expect_rgb = (0.5 + SH_C0 * sh[:, 0] + (basis[..., None] * sh[:, 1:]).sum(1)).clamp_min(0)
    cam2 = (V,) + cam[1:]
    torch.testing.assert_close(render(dict(base, colors=sh), cam2).rgb, render(dict(base, colors=expect_rgb), cam2).rgb,
                               atol=1e-12, rtol=0)


def _tiny_case():
    g = torch.Generator().manual_seed(3)
    n = 3
    means = torch.tensor([[0.0, 0.0, 2.0], [0.05, -0.04, 2.3], [-0.06, 0.03, 2.6]], dtype=D)
    quats = torch.randn(n, 4, generator=g, dtype=D)
    scales = torch.tensor([[0.04, 0.06, 0.05], [0.07, 0.03, 0.05], [0.05, 0.05, 0.08]], dtype=D)
    opac = torch.tensor([0.6, 0.7, 0.8], dtype=D)
    sh = torch.randn(n, 4, 3, generator=g, dtype=D) * 0.3
    V = torch.eye(4, dtype=D)[None]
    V[0, :3, :3] = quat_to_matrix(torch.tensor([1.0, 0.05, -0.03, 0.02], dtype=D))
    K = torch.tensor([[[30.0, 0, 6.2], [0, 30.0, 5.1], [0, 0, 1]]], dtype=D)
    return (means, quats, scales, opac, sh), V, K


def test_gradients_match_finite_differences_for_all_inputs():
    inputs, V, K = _tiny_case()
    inputs = tuple(t.clone().requires_grad_(True) for t in inputs)
    weights = torch.randn(1, 10, 12, 5, generator=torch.Generator().manual_seed(4), dtype=D)

    def f(means, quats, scales, opac, sh):
        out = rasterize(means, quats, scales, opac, sh, V, K, 12, 10, background=(0.3, 0.6, 0.9), backend="torch")
        return (torch.cat([out.rgb, out.alpha, out.depth], -1) * weights).sum()

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
    f(*inputs).backward()
    for t in inputs:
        assert torch.isfinite(t.grad).all()
        assert (t.grad.reshape(3, -1).abs().sum(-1) > 0).all()  # every Gaussian gets a gradient


def test_means2d_gradients_for_densification_and_absgrad():
    inputs, V, K = _tiny_case()
    inputs = [t.requires_grad_(True) for t in inputs]
    out = rasterize(*inputs, V, K, 12, 10, backend="torch", absgrad=True)
    out.means2d.retain_grad()
    out.rgb.sum().backward()
    g = out.means2d.grad
    assert g.shape == (1, 3, 2) and (g.abs().sum(-1) > 0).all()
    assert (out.means2d.absgrad >= g.abs() - 1e-12).all() and (out.means2d.absgrad > 0).all()


def test_nothing_visible_keeps_the_graph_and_culls():
    s = splats([[0.0, 0.0, -2.0]], [0.1], [0.9], [[1.0, 0, 0]])  # behind the camera
    s = {k: v.requires_grad_(True) for k, v in s.items()}
    out = render(s, camera())
    assert not out.visible.any() and (out.radii == 0).all()
    torch.testing.assert_close(out.rgb, torch.ones_like(out.rgb))
    out.rgb.sum().backward()
    assert s["means"].grad is not None and (s["means"].grad == 0).all()


def test_float32_speed_and_chunking_are_consistent(monkeypatch):
    """Many splats in float32: chunked candidate enumeration and chunked, recomputed-in-backward
    compositing (what large images use) give the same image and gradients as one pass."""
    import backend.render.gaussians as gaussians

    g = torch.Generator().manual_seed(5)
    n = 2000
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    args = (d * 0.1, torch.randn(n, 4, generator=g), torch.rand(n, 3, generator=g) * 0.006 + 0.002,
            torch.rand(n, generator=g) * 0.8 + 0.1, torch.randn(n, 16, 3, generator=g) * 0.3)
    V = torch.eye(4)[None]
    V[0, 2, 3] = 0.6
    K = torch.tensor([[[119.4, 0, 31.5], [0, 119.4, 31.5], [0, 0, 1]]])

    def run():
        params = [a.clone().requires_grad_(True) for a in args]
        out = rasterize(*params, V, K, 64, 64, backend="torch")
        (out.rgb.sum() + out.depth.sum()).backward()
        return out, [p.grad for p in params]

    t0 = time.perf_counter()
    ref, ref_grads = run()
    assert time.perf_counter() - t0 < 10.0  # ~0.1 s on an idle core; generous for busy CI machines
    monkeypatch.setattr(gaussians, "_CANDIDATES_PER_CHUNK", 5000)
    monkeypatch.setattr(gaussians, "_PAIRS_PER_CHUNK", 3000)
    monkeypatch.setattr(gaussians, "_RECOMPUTE_ABOVE", 3000)
    small, grads = run()
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(small, name), getattr(ref, name), atol=1e-5, rtol=0)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gsplat_matches_the_cpu_path():
    from backend.gpucheck.sections import gradients_agree, render_agreement_inputs

    args, V, K = render_agreement_inputs()  # the GPU check's scene: one definition
    cpu_in = [a.clone().requires_grad_(True) for a in args]
    gpu_in = [a.cuda().requires_grad_(True) for a in args]
    cpu = rasterize(*cpu_in, V, K, 64, 64, backend="torch")
    gpu = rasterize(*gpu_in, V.cuda(), K.cuda(), 64, 64, backend="auto")
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(cpu, name), atol=2e-3, rtol=0)
    torch.testing.assert_close(gpu.radii.cpu(), cpu.radii)
    cpu.rgb.sum().backward()
    gpu.rgb.sum().backward()
    for a, b in zip(cpu_in, gpu_in):
        assert bool(gradients_agree(b.grad.cpu(), a.grad).all())
