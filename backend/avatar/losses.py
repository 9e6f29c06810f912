"""Losses of the avatar fit (paper S2.4, eq. S4-S6; CAP4D/GaussianAvatars terms rebuilt from the text).

All images are torch float ``(..., H, W, 3)`` in [0, 1]. Every function returns a scalar tensor.

* :func:`ssim` — SSIM with an 11x11 Gaussian window (sigma 1.5), ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``,
  population (not sample) covariances, averaged over the *valid* region (windows fully inside the
  image) and the channels. This is exactly ``skimage.metrics.structural_similarity(a, b,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)``.
* :func:`photometric_loss` — ``(1 - l) L1 + l (1 - SSIM)`` with ``l = 0.2`` (GaussianAvatars), plus an
  optional perceptual term (LPIPS only when its weights exist locally: :func:`load_lpips`).
* :func:`laplacian_loss` — smoothness of the U-Net deformation map (3x3 Laplacian, squared, channel sum).
* :func:`velocity_rotation_loss` (eq. S4), :func:`velocity_deformation_loss` (eq. S5).
* :func:`scale_loss`, :func:`position_loss` — GaussianAvatars-style hinge regularisers in triangle units.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
DSSIM_WEIGHT = 0.2  # GaussianAvatars: 0.8 L1 + 0.2 D-SSIM
LAMBDA_V_ROT = 0.005  # paper eq. S4
LAMBDA_V_DEFORM = 0.4  # paper eq. S5


@lru_cache(maxsize=8)
def _gauss_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g.to(torch.float32)


def _to_nchw(img: torch.Tensor) -> torch.Tensor:
    """(..., H, W, C) -> (B, C, H, W)."""
    h, w, c = img.shape[-3:]
    return img.reshape(-1, h, w, c).permute(0, 3, 1, 2)


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable valid Gaussian filter of (B, C, H, W) per channel."""
    c = x.shape[1]
    k = g.to(x)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0,
             window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Per-pixel SSIM over the valid region: (B, C, H - window + 1, W - window + 1)."""
    x, y = _to_nchw(a), _to_nchw(b)
    if x.dtype == torch.float64:
        g = _gauss_window(window, sigma).double()
    else:
        g = _gauss_window(window, sigma)
    mx, my = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mx * mx
    syy = _blur(y * y, g) - my * my
    sxy = _blur(x * y, g) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of images ``(..., H, W, C)`` (see the module docstring for the exact definition)."""
    return ssim_map(a, b, data_range).mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1]."""
    mse = float(((a.detach().float() - b.detach().float()) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


# ---------------------------------------------------------------------------------------------
# LPIPS hook: only when weights exist on this machine (nothing is downloaded)
# ---------------------------------------------------------------------------------------------

LPIPS_ENV = "MVP4D_LPIPS_WEIGHTS"


def load_lpips(path: str | os.PathLike | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """An LPIPS function ``(render, target) -> scalar`` when a local TorchScript LPIPS module exists.

    The weights are never fetched: pass ``path`` (or set ``$MVP4D_LPIPS_WEIGHTS``) to a TorchScript
    file taking two ``(B, 3, H, W)`` images in [-1, 1]. Returns None when absent (the term is skipped).
    """
    p = path or os.environ.get(LPIPS_ENV)
    if not p or not Path(p).is_file():
        return None
    net = torch.jit.load(str(p), map_location="cpu").eval()
    for q in net.parameters():
        q.requires_grad_(False)

    def lpips(render: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return net(_to_nchw(render) * 2 - 1, _to_nchw(target) * 2 - 1).mean()

    return lpips


def photometric_loss(render: torch.Tensor, target: torch.Tensor, dssim_weight: float = DSSIM_WEIGHT,
                     lpips: Callable | None = None, lpips_weight: float = 0.0) -> torch.Tensor:
    """``(1 - l) L1 + l (1 - SSIM)`` (+ ``lpips_weight * LPIPS`` when an LPIPS function is given)."""
    loss = (1.0 - dssim_weight) * (render - target).abs().mean() + dssim_weight * (1.0 - ssim(render, target))
    if lpips is not None and lpips_weight > 0:
        loss = loss + lpips_weight * lpips(render, target)
    return loss


# ---------------------------------------------------------------------------------------------
# Regularisers
# ---------------------------------------------------------------------------------------------

_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian_loss(deform_map: torch.Tensor) -> torch.Tensor:
    """Smoothness of a deformation map ``(B, C, H, W)``: mean over texels of sum_c (Laplacian)^2."""
    c = deform_map.shape[1]
    k = _LAPLACE.to(deform_map).view(1, 1, 3, 3).expand(c, 1, 3, 3)
    lap = F.conv2d(deform_map, k, groups=c)
    return (lap**2).sum(1).mean()


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) of quaternions (..., 4) wxyz (normalised first)."""
    q = F.normalize(q, dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
         2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
         2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def relative_rotation_angle_sq(q0: torch.Tensor, q1: torch.Tensor) -> torch.Tensor:
    """``||log(R0^T R1)||^2`` per Gaussian for quaternions (..., 4) wxyz: the squared rotation angle.

    Computed from the quaternion of the relative rotation, ``angle = 2 atan2(|v|, |w|)``, which is
    stable near zero (the arccos of the matrix trace is not) and sign-invariant (q and -q agree).
    """
    q0, q1 = F.normalize(q0, dim=-1), F.normalize(q1, dim=-1)
    w0, v0 = q0[..., :1], q0[..., 1:]
    w1, v1 = q1[..., :1], q1[..., 1:]
    # conj(q0) * q1
    w = w0 * w1 + (v0 * v1).sum(-1, keepdim=True)
    v = w0 * v1 - w1 * v0 - torch.cross(v0, v1, dim=-1)
    vn = torch.sqrt((v * v).sum(-1) + 1e-20)
    angle = 2.0 * torch.atan2(vn, w.abs()[..., 0])
    return angle**2


def velocity_rotation_loss(quats_t: torch.Tensor, quats_t1: torch.Tensor, weight: float = LAMBDA_V_ROT) -> torch.Tensor:
    """Eq. S4: ``lambda/N sum_i ||log(R_{i,f}^T R_{i,f+1})||^2`` from world quaternions (N, 4) wxyz."""
    return weight * relative_rotation_angle_sq(quats_t, quats_t1).mean()


def velocity_deformation_loss(d_t: torch.Tensor, d_t1: torch.Tensor, weight: float = LAMBDA_V_DEFORM) -> torch.Tensor:
    """Eq. S5: ``lambda/N sum_i ||d_{i,t+1} - d_{i,t}||^2`` of the U-Net deformations (N, 3)."""
    return weight * ((d_t1 - d_t) ** 2).sum(-1).mean()


def scale_loss(log_scale: torch.Tensor, threshold: float = 0.6) -> torch.Tensor:
    """GaussianAvatars: mean ReLU(exp(local log scale) - threshold) (triangle-size units)."""
    if log_scale.numel() == 0:
        return log_scale.sum()
    return F.relu(torch.exp(log_scale) - threshold).norm(dim=-1).mean()


def position_loss(local_position: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """GaussianAvatars: mean ReLU(||local position|| - threshold) (triangle-size units)."""
    if local_position.numel() == 0:
        return local_position.sum()
    return F.relu(local_position.norm(dim=-1) - threshold).mean()


__all__ = [
    "ssim", "ssim_map", "psnr", "photometric_loss", "load_lpips", "laplacian_loss",
    "velocity_rotation_loss", "velocity_deformation_loss", "relative_rotation_angle_sq",
    "quat_to_matrix", "scale_loss", "position_loss", "LAMBDA_V_ROT", "LAMBDA_V_DEFORM", "DSSIM_WEIGHT",
]
