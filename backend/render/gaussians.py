"""Gaussian splat rasterization: gsplat's CUDA kernels on GPU, a sparse torch compositor on CPU.

One entry, :func:`rasterize`, with the same maths on both paths so an avatar fitted on CPU renders
the same on GPU (and the tests, which run on CPU, test what the GPU runs):

* **CUDA** (``backend="auto"`` with CUDA tensors, or ``"gsplat"``): ``gsplat.rasterization`` with
  ``render_mode="RGB+ED"`` and ``packed=False``.
* **CPU** (``"torch"``): projection through gsplat's pure-torch reference
  (``_fully_fused_projection``) and its torch SH evaluation (``_spherical_harmonics``, importable
  without CUDA); gsplat's pixel compositing is a CUDA op, so compositing is done here, **sparsely**:
  (Gaussian, pixel) pairs inside each splat's opacity-aware 3-sigma box, alpha =
  min(0.999, o * exp(-d^T Sigma^-1 d / 2)) dropped below 1/255, pairs sorted by (pixel, depth),
  transmittance per pixel segment from a float64 cumulative sum of log(1 - alpha) minus its
  value at the segment start, front-to-back stop when T would fall to 1e-4, colour/depth
  accumulated with ``index_add_``. All thresholds are gsplat's (``RasterizeToPixels3DGSFwd.cu``).
  A dense pixel x Gaussian matrix costs 1-2 s per step at 64^2 with 2-5k splats;
  this takes 0.03-0.06 s forward+backward there with one torch thread (more threads are slower
  on a busy 2-core machine). Large images composite in chunks recomputed during backward.

Pixel convention: the backend's cameras put pixel centres at integer coordinates (docs/
architecture.md); gsplat samples pixel (i, j) at (j + 0.5, i + 0.5). Both paths therefore shift the
principal point by +0.5 before projecting, so a point projecting to u = j lands on pixel column j.
``means2d`` in the output are in gsplat's shifted coordinates (only their gradients matter: they are
the screen-space gradients used for densification, in pixels, as gsplat's).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.utils.checkpoint

__all__ = ["RenderOutput", "rasterize", "rgb_to_sh", "sh_to_rgb", "SH_C0"]

SH_C0 = 0.28209479177387814  # Y_0^0: colour = 0.5 + SH_C0 * dc (3DGS / gsplat convention)
ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat: splats/pairs with alpha below this are skipped
ALPHA_MAX = 0.999  # gsplat clamps alpha to this (keeps log(1 - alpha) finite)
T_STOP = 1e-4  # gsplat stops a pixel when the transmittance would fall to this (exclusive)
MAX_EXTEND = 3.33  # gsplat's sigma multiple for the bounding box

_CANDIDATES_PER_CHUNK = 1 << 22  # (Gaussian, pixel) candidates evaluated at once (no grad)
_PAIRS_PER_CHUNK = 1 << 21  # composited pairs per chunk when recomputing in backward
_RECOMPUTE_ABOVE = 1 << 22  # above this many pairs (~0.8 GB of autograd state), recompute per chunk


@dataclass
class RenderOutput:
    """C rendered views of H x W.

    ``rgb`` (C, H, W, 3) composited over the background; ``alpha`` (C, H, W, 1) = 1 - final
    transmittance; ``depth`` (C, H, W, 1) expected camera z (sum w z / alpha; 0 where empty);
    ``means2d`` (C, N, 2) projected centres in gsplat pixel coordinates, part of the autograd
    graph (call ``retain_grad()`` before ``backward`` to read screen-space gradients; with
    ``absgrad=True`` ``means2d.absgrad`` holds the per-pixel absolute gradient sums after
    backward); ``radii`` (C, N, 2) int32 box half-sizes in pixels, 0 when culled; ``visible``
    (C, N) bool.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    means2d: torch.Tensor
    radii: torch.Tensor
    visible: torch.Tensor


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    """SH DC coefficient that renders as ``rgb`` (inverse of :func:`sh_to_rgb`)."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh_dc: torch.Tensor) -> torch.Tensor:
    """View-independent colour of an SH DC coefficient (before gsplat's clamp at 0)."""
    return sh_dc * SH_C0 + 0.5


def _gsplat_torch():
    """gsplat's pure-torch reference functions (import is lazy: gsplat takes ~1.5 s to import)."""
    from gsplat.cuda import _torch_impl

    return _torch_impl


def _sh_degree(colors: torch.Tensor, sh_degree: int | None) -> int | None:
    if colors.ndim == 2:
        if sh_degree is not None:
            raise ValueError("sh_degree given but colors are (N, 3) RGB; pass (N, K, 3) SH coefficients")
        return None
    K = colors.shape[1]
    if sh_degree is None:
        d = math.isqrt(K) - 1
        if (d + 1) ** 2 != K:
            raise ValueError(f"colors has K={K} SH coefficients, not a square; pass sh_degree")
        return d
    if (sh_degree + 1) ** 2 > K:
        raise ValueError(f"sh_degree {sh_degree} needs {(sh_degree + 1) ** 2} coefficients, colors has {K}")
    return sh_degree


def _check(means, quats, scales, opacities, colors, viewmats, Ks) -> tuple[int, int]:
    N = means.shape[0]
    C = viewmats.shape[0]
    expect = {"means": (means, (N, 3)), "quats": (quats, (N, 4)), "scales": (scales, (N, 3)),
              "opacities": (opacities, (N,)), "viewmats": (viewmats, (C, 4, 4)), "Ks": (Ks, (C, 3, 3))}
    for name, (t, shape) in expect.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"rasterize: {name} must be {shape}, got {tuple(t.shape)}")
    if not (colors.shape[0] == N and colors.shape[-1] == 3 and colors.ndim in (2, 3)):
        raise ValueError(f"rasterize: colors must be (N, 3) or (N, K, 3) with N={N}, got {tuple(colors.shape)}")
    return C, N


def _backgrounds(background, C: int, like: torch.Tensor) -> torch.Tensor:
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if bg.ndim == 1:
        bg = bg[None].expand(C, 3)
    if tuple(bg.shape) != (C, 3):
        raise ValueError(f"rasterize: background must be (3,) or ({C}, 3), got {tuple(bg.shape)}")
    return bg


def _shift_half_pixel(Ks: torch.Tensor) -> torch.Tensor:
    """Integer pixel centres (ours) -> half-integer centres (gsplat): cx, cy += 0.5."""
    shift = torch.zeros_like(Ks)
    shift[:, 0, 2] = 0.5
    shift[:, 1, 2] = 0.5
    return Ks + shift


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    background: Sequence[float] | torch.Tensor = (1.0, 1.0, 1.0),
    near: float = 0.01,
    far: float = 1e3,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    backend: Literal["auto", "gsplat", "torch"] = "auto",
    absgrad: bool = False,
) -> RenderOutput:
    """Render N world-space Gaussians into C OpenCV cameras (module docstring for the maths).

    ``means`` (N, 3); ``quats`` (N, 4) wxyz, any norm; ``scales`` (N, 3) linear std-devs;
    ``opacities`` (N,) in [0, 1]; ``colors`` (N, 3) RGB or (N, K, 3) SH coefficients (degree
    ``sh_degree``, default the largest K holds; evaluated as gsplat does: 0.5 + SH, clamped at 0,
    view direction from the camera centre, never rotated); ``viewmats`` (C, 4, 4) world->camera;
    ``Ks`` (C, 3, 3) pixels, integer pixel centres; ``background`` (3,) or (C, 3).
    Differentiable w.r.t. means, quats, scales, opacities, colors (and background).
    """
    C, N = _check(means, quats, scales, opacities, colors, viewmats, Ks)
    deg = _sh_degree(colors, sh_degree)
    bg = _backgrounds(background, C, means)
    Ks_g = _shift_half_pixel(Ks.to(means))
    viewmats = viewmats.to(means)
    if backend == "auto":
        backend = "gsplat" if means.is_cuda else "torch"
    if backend == "gsplat":
        if not means.is_cuda:
            raise ValueError("rasterize: backend='gsplat' needs CUDA tensors; use backend='torch' on CPU")
        return _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks_g, width, height, deg,
                                 bg, near, far, radius_clip, eps2d, absgrad)
    if backend != "torch":
        raise ValueError(f"rasterize: unknown backend {backend!r}")
    return _rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks_g, width, height, deg, bg,
                            near, far, radius_clip, eps2d, absgrad)


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks_g, width, height, deg, bg, near, far,
                      radius_clip, eps2d, absgrad) -> RenderOutput:
    from gsplat import rasterization

    render, alpha, meta = rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks_g, width, height, near_plane=near, far_plane=far,
        radius_clip=radius_clip, eps2d=eps2d, sh_degree=deg, packed=False, backgrounds=bg,
        render_mode="RGB+ED", absgrad=absgrad,
    )
    radii = meta["radii"]
    if radii.ndim == 2:  # gsplat < 1.5 gave one radius per Gaussian
        radii = radii[..., None].expand(*radii.shape, 2)
    return RenderOutput(rgb=render[..., :3], alpha=alpha, depth=render[..., 3:4], means2d=meta["means2d"],
                        radii=radii, visible=(radii > 0).all(dim=-1))


# ---------------------------------------------------------------------------------------------
# CPU path
# ---------------------------------------------------------------------------------------------


def _view_colors(colors: torch.Tensor, deg: int | None, means: torch.Tensor, viewmats: torch.Tensor) -> torch.Tensor:
    """(C, N, 3) post-activation colours per view (gsplat's SH convention)."""
    C = viewmats.shape[0]
    if deg is None:
        return colors[None].expand(C, -1, -1)
    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # (C, 3)
    dirs = means[None] - campos[:, None]  # (C, N, 3)
    K = (deg + 1) ** 2
    coeffs = colors[None, :, :K].expand(C, -1, -1, -1)
    rgb = _gsplat_torch()._spherical_harmonics(deg, dirs, coeffs)
    return torch.clamp_min(rgb + 0.5, 0.0)


@torch.no_grad()
def _boxes(means2d, conics, opac, radii_ref, width, height, radius_clip):
    """gsplat's opacity-aware pixel boxes: (rx, ry) float and the validity mask, all (C, N)."""
    a, b, c = conics.unbind(-1)
    inv_det = (a * c - b * b).clamp_min(1e-30)  # conic = Sigma^-1, so this is 1 / det(Sigma)
    var_x, var_y = c / inv_det, a / inv_det
    extend = torch.sqrt(2.0 * torch.log(opac.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp_max(MAX_EXTEND)
    rx = torch.ceil(extend * var_x.sqrt())
    ry = torch.ceil(extend * var_y.sqrt())
    mx, my = means2d[..., 0], means2d[..., 1]
    valid = (
        (radii_ref > 0).all(dim=-1)  # depth inside (near, far), det > 0
        & (opac >= ALPHA_THRESHOLD)
        & ~((rx <= radius_clip) & (ry <= radius_clip))
        & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
    )
    return rx, ry, valid


@torch.no_grad()
def _pairs(m2d, con, opac, depths, rx, ry, valid, width: int, height: int):
    """All (Gaussian, pixel) pairs with alpha >= 1/255, sorted by (pixel, depth).

    Returns flat Gaussian ids (into C*N) and flat pixel ids (into C*H*W), both int32, and the
    pairs' alpha.
    Boxes are visited in (camera, depth) order and their candidates enumerated in chunks (so the
    candidate arrays stay bounded); one stable sort by pixel then gives (pixel, depth) order.
    ``index_select`` throughout: it is 2-4x faster than advanced indexing on CPU.
    """
    C, N = valid.shape
    dev = m2d.device
    sel = torch.index_select
    # visible Gaussians in (camera, depth) order
    order = torch.argsort(depths.masked_fill(~valid, float("inf")), dim=1)
    fid = (order + torch.arange(C, device=dev)[:, None] * N).reshape(-1)
    fid = fid[sel(valid.reshape(-1), 0, fid)]
    mx, my = sel(m2d[..., 0].reshape(-1), 0, fid), sel(m2d[..., 1].reshape(-1), 0, fid)
    rxf, ryf = sel(rx.reshape(-1), 0, fid), sel(ry.reshape(-1), 0, fid)
    # pixel j is sampled at j + 0.5: keep |j + 0.5 - mx| <= rx
    x0 = torch.ceil(mx - rxf - 0.5).clamp_min(0)
    x1 = torch.floor(mx + rxf - 0.5).clamp_max(width - 1)
    y0 = torch.ceil(my - ryf - 0.5).clamp_min(0)
    y1 = torch.floor(my + ryf - 0.5).clamp_max(height - 1)
    nx = (x1 - x0 + 1).clamp_min(0).long()
    ny = (y1 - y0 + 1).clamp_min(0).long()
    x0, y0 = x0.long(), y0.long()
    base = (fid // N) * (height * width) + y0 * width + x0  # flat id of each box's first pixel
    counts = nx * ny
    ends = torch.cumsum(counts, 0)
    a_f, b_f, c_f = (con[..., i].reshape(-1) for i in range(3))
    op_f = opac.reshape(-1)
    out_g, out_p, out_a = [], [], []
    start, nb = 0, fid.numel()
    while start < nb:
        done = int(ends[start - 1]) if start > 0 else 0
        stop = max(int(torch.searchsorted(ends, done + _CANDIDATES_PER_CHUNK, right=True)), start + 1)
        cnt = counts[start:stop]
        k = torch.repeat_interleave(torch.arange(stop - start, device=dev), cnt)  # box of each candidate
        local = torch.arange(int(cnt.sum()), device=dev) - sel(torch.cumsum(cnt, 0) - cnt, 0, k)
        nxk = sel(nx[start:stop], 0, k)
        row = local // nxk
        col = local - row * nxk  # int64 % is slow on CPU
        pix = sel(base[start:stop], 0, k) + row * width + col
        g = sel(fid[start:stop], 0, k)
        dx = sel(mx[start:stop], 0, k) - (sel(x0[start:stop], 0, k) + col).to(m2d.dtype) - 0.5
        dy = sel(my[start:stop], 0, k) - (sel(y0[start:stop], 0, k) + row).to(m2d.dtype) - 0.5
        sigma = 0.5 * (sel(a_f, 0, g) * dx * dx + sel(c_f, 0, g) * dy * dy) + sel(b_f, 0, g) * dx * dy
        alpha = torch.clamp_max(sel(op_f, 0, g) * torch.exp(-sigma), ALPHA_MAX)
        keep = torch.nonzero((sigma >= 0) & (alpha >= ALPHA_THRESHOLD)).squeeze(1)
        out_g.append(sel(g, 0, keep).int())  # int32 storage halves the pair arrays; chunks go back
        out_p.append(sel(pix, 0, keep).int())  # to int64 (index_add_ is 5x slower with int32)
        out_a.append(sel(alpha, 0, keep))
        start = stop
    if not out_g:
        z = torch.zeros(0, dtype=torch.int32, device=dev)
        return z, z, torch.zeros(0, dtype=m2d.dtype, device=dev)
    g, pix, alpha = torch.cat(out_g), torch.cat(out_p), torch.cat(out_a)
    del out_g, out_p, out_a
    _, perm = torch.sort(pix, stable=True)  # int32 sorts ~2x faster than int64
    return sel(g, 0, perm), sel(pix, 0, perm), sel(alpha, 0, perm)


def _pair_alpha(m2d_f, con_f, op_f, g, pix, width: int, height: int):
    """Differentiable alpha of each pair (the expression gsplat's kernel evaluates) and the
    gathered means2d (for the absgrad hook)."""
    px = (pix % width).to(m2d_f.dtype) + 0.5
    py = ((pix // width) % height).to(m2d_f.dtype) + 0.5
    m = torch.index_select(m2d_f, 0, g)
    dx, dy = m[:, 0] - px, m[:, 1] - py
    cc = torch.index_select(con_f, 0, g)
    sigma = 0.5 * (cc[:, 0] * dx * dx + cc[:, 2] * dy * dy) + cc[:, 1] * dx * dy
    return torch.clamp_max(torch.index_select(op_f, 0, g) * torch.exp(-sigma), ALPHA_MAX), m


def _segments(pix: torch.Tensor) -> torch.Tensor:
    """Index of the first pair of each pair's pixel segment (pairs sorted by pixel)."""
    n = pix.numel()
    is_start = torch.ones(n, dtype=torch.bool, device=pix.device)
    is_start[1:] = pix[1:] != pix[:-1]
    idx = torch.arange(n, device=pix.device)
    return torch.cummax(torch.where(is_start, idx, torch.zeros_like(idx)), 0).values


def _chunk_bounds(pix: torch.Tensor, limit: int) -> list[int]:
    """Pair indices splitting sorted pairs into chunks of <= ``limit`` that end on pixel boundaries
    (a single pixel with more pairs than ``limit`` stays whole)."""
    n = pix.numel()
    bounds = [0]
    while bounds[-1] < n:
        target = bounds[-1] + limit
        if target >= n:
            bounds.append(n)
            break
        cut = int(torch.searchsorted(pix, pix[target], right=False))
        if cut <= bounds[-1]:
            cut = int(torch.searchsorted(pix, pix[target], right=True))
        bounds.append(cut)
    return bounds


def _rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks_g, width, height, deg, bg, near, far,
                     radius_clip, eps2d, absgrad) -> RenderOutput:
    ti = _gsplat_torch()
    C, N = viewmats.shape[0], means.shape[0]
    dev, dt = means.device, means.dtype
    covars, _ = ti._quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    radii_ref, means2d, depths, conics, _ = ti._fully_fused_projection(
        means, covars, viewmats, Ks_g, width, height, eps2d=eps2d, near_plane=near, far_plane=far)
    opac = opacities[None].expand(C, N)
    rx, ry, valid = _boxes(means2d.detach(), conics.detach(), opac.detach(), radii_ref, width, height, radius_clip)
    radii = torch.where(valid[..., None], torch.stack([rx, ry], -1), 0.0).to(torch.int32)
    view_rgb = _view_colors(colors, deg, means, viewmats)  # (C, N, 3)

    P = C * height * width
    if P >= 2**31 or C * N >= 2**31:
        raise ValueError("rasterize: more than 2^31 pixels or camera x Gaussian pairs; render fewer views at once")
    g, pix, a = _pairs(means2d.detach(), conics.detach(), opac.detach(), depths.detach(), rx, ry, valid, width,
                       height)
    m2d_f, con_f, op_f = means2d.reshape(-1, 2), conics.reshape(-1, 3), opac.reshape(-1)
    feats = torch.cat([view_rgb, depths[..., None]], dim=-1).reshape(-1, 4)  # (C*N, 4): rgb, depth
    absbuf = torch.zeros(C * N, 2, dtype=dt, device=dev) if absgrad else None
    # Few pairs (64^2-128^2): one differentiable pass. Many (large images): chunks ending on pixel
    # boundaries whose compositing is recomputed during backward instead of keeping ~200 bytes of
    # autograd state per pair (34M pairs at 512^2 would need ~7 GB).
    recompute = g.numel() > _RECOMPUTE_ABOVE and torch.is_grad_enabled()
    bounds = _chunk_bounds(pix, _PAIRS_PER_CHUNK) if recompute else ([0, g.numel()] if g.numel() else [0])
    acc_parts, logt_parts = [], []
    for k in range(len(bounds) - 1):
        lo, hi = bounds[k], bounds[k + 1]
        p0 = 0 if k == 0 else int(pix[lo])
        p1 = P if hi >= pix.numel() else int(pix[hi])
        gc, pc = _early_stop(g[lo:hi].long(), pix[lo:hi].long(), a[lo:hi])
        args = (m2d_f, con_f, op_f, feats, gc, pc, p0, p1, width, height)
        fn = functools.partial(_composite, absbuf=absbuf)  # not an input: the hook writes into it
        if recompute:
            acc, logt = torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
        else:
            acc, logt = fn(*args)
        acc_parts.append(acc)
        logt_parts.append(logt)
    del g, pix, a
    if not acc_parts:  # nothing on screen: keep the outputs attached to the inputs (zero gradients)
        zero = sum(t.sum() for t in (means, quats, scales, opacities, colors) if t.requires_grad) * 0.0
        acc_parts = [torch.zeros(P, 4, dtype=dt, device=dev) + zero]
        logt_parts = [torch.zeros(P, dtype=torch.float64, device=dev)]
    acc = torch.cat(acc_parts).reshape(C, height, width, 4)
    T = torch.exp(torch.cat(logt_parts)).to(dt).reshape(C, height, width, 1)
    alpha = 1.0 - T
    rgb = acc[..., :3] + T * bg[:, None, None, :]
    depth = acc[..., 3:4] / alpha.clamp_min(1e-10)
    if absgrad:
        means2d.absgrad = absbuf.view(C, N, 2)  # filled during backward by the hook in _composite
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, means2d=means2d, radii=radii, visible=valid)


@torch.no_grad()
def _early_stop(g: torch.Tensor, pix: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the pairs gsplat never reaches: a pixel stops (exclusive) at the Gaussian that would
    take its transmittance to <= 1e-4. Pairs sorted by (pixel, depth), whole pixels only."""
    l1m = torch.log1p(-alpha.double())
    incl = torch.cumsum(l1m, 0)
    start = _segments(pix)
    keep = (incl - (incl[start] - l1m[start])) > math.log(T_STOP)
    if bool(keep.all()):
        return g, pix
    keep = torch.nonzero(keep).squeeze(1)
    return torch.index_select(g, 0, keep), torch.index_select(pix, 0, keep)


def _composite(m2d_f, con_f, op_f, feats, g, pix, p0: int, p1: int, width: int, height: int, *, absbuf=None):
    """Front-to-back compositing of pairs sorted by (pixel, depth) whose pixels lie in [p0, p1).

    Returns the weighted feature sums (p1 - p0, 4) and log final transmittance (p1 - p0,) float64.
    """
    alpha, m = _pair_alpha(m2d_f, con_f, op_f, g, pix, width, height)
    if absbuf is not None and m.requires_grad:
        def _accumulate_abs(grad: torch.Tensor) -> None:  # per-pixel |d loss / d means2d|, summed
            absbuf.index_add_(0, g, grad.abs())

        m.register_hook(_accumulate_abs)
    local = pix - p0
    l1m = torch.log1p(-alpha).double()
    excl = torch.cumsum(l1m, 0) - l1m  # float64: the global running sum must not lose precision
    T = torch.exp(excl - excl[_segments(local)]).to(alpha.dtype)
    w = (alpha * T)[:, None] * torch.index_select(feats, 0, g)
    acc = torch.zeros(p1 - p0, 4, dtype=feats.dtype, device=feats.device).index_add(0, local, w)
    logt = torch.zeros(p1 - p0, dtype=torch.float64, device=feats.device).index_add(0, local, l1m)
    return acc, logt
