"""The time-conditioned deformation U-Net of paper S2.4, in a chart that needs no UV layout.

**Chart (our substitute for FLAME's UVs).** CAP4D runs its U-Net in FLAME's UV space. The toy head and
the FLAME ``.pkl`` carry no UVs, so every Gaussian gets a deterministic 2-D coordinate from the
*template* mesh instead (:func:`face_chart`): the centroid of its parent triangle on the neutral,
identity-free template is projected onto a sphere around the head's centre (the centre of the
template's bounding box; the head-region box when the model has a head mask) with the **Lambert
cylindrical equal-area projection**: ``u = atan2(x, z) / pi`` (azimuth; 0 = the face, +-1 = the back of
the head, where the seam lies) and ``v = -(y - c_y) / r`` with ``r`` the distance to the centre (the
sine of the elevation; -1 = top, +1 = chin/neck). Equal-area means texels cover similar surface
areas on a roughly spherical head; the seam sits at the back of the head, which 120-degree rings
never see head-on. The chart is a pure function of ``v_template`` and ``faces``, so Blender, the
exporter and a later resume all agree; Gaussians of one triangle share their triangle's
coordinate (densified children inherit it). Distinct surfaces that project onto the same spot (the
inside of the mouth behind the lips, eyeballs behind lids) share a deformation, like coarse UVs do.

**Network.** Input per texel: 2-D positional encoding of the texel's chart coordinate (2 coords x
``pe_freqs`` frequencies 2^0..2^(n-1) x sin/cos, as CAP4D) + the 8-channel sinusoidal embedding of the
frame index (:func:`time_embedding`), broadcast over texels. A U-Net (strided 3x3 conv down, bilinear
up + skip concatenation, LeakyReLU 0.2, *no* instance normalisation: instance norm would subtract the
spatially constant time channels and erase the frame dependence) outputs 3 channels, the per-texel
deformation: a displacement in a smooth tangent frame of the surface (along the azimuth tangent, the
normal and the elevation tangent, in triangle sizes; the fit turns it into triangle-local detail
offsets per frame). A smooth frame keeps the map smooth where the surface is, which a map of
triangle-local offsets would not be (each triangle's first local axis follows an arbitrary edge).
Its last layer is zero-initialised so the deformation starts at zero. :func:`sample_chart` reads each Gaussian's deformation with bilinear ``grid_sample``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TIME_CHANNELS = 8


def face_chart(template_vertices: np.ndarray | torch.Tensor, faces: np.ndarray | torch.Tensor,
               head_mask: np.ndarray | None = None) -> torch.Tensor:
    """(F, 2) chart coordinates in [-1, 1] of every triangle's template centroid (module docstring)."""
    v = torch.as_tensor(np.asarray(template_vertices), dtype=torch.float64).reshape(-1, 3)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.long)
    ref = v[torch.as_tensor(head_mask, dtype=torch.bool)] if head_mask is not None and np.any(head_mask) else v
    center = (ref.min(0).values + ref.max(0).values) / 2.0
    c = v[f].mean(1) - center
    r = c.norm(dim=-1).clamp_min(1e-12)
    u = torch.atan2(c[:, 0], c[:, 2]) / math.pi
    w = -(c[:, 1] / r)
    return torch.stack([u, w], dim=-1).clamp(-1.0, 1.0).to(torch.float32)


def time_embedding(frames: torch.Tensor, num_frames: int, channels: int = TIME_CHANNELS) -> torch.Tensor:
    """(B, channels) sinusoidal embedding of frame indices: sin/cos(2^k pi tau), tau = f / (T - 1)."""
    tau = frames.to(torch.float32) / max(num_frames - 1, 1)
    k = torch.arange(channels // 2, dtype=torch.float32, device=frames.device)  # on the frames' device (CUDA fit)
    ang = tau[:, None] * (2.0**k)[None] * math.pi
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)


def positional_encoding(resolution: int, freqs: int) -> torch.Tensor:
    """(4 * freqs, R, R) encoding of texel-centre coordinates in [-1, 1] (u along width, v along height)."""
    c = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2.0 - 1.0
    vv, uu = torch.meshgrid(c, c, indexing="ij")
    chans = []
    for coord in (uu, vv):
        for k in range(freqs):
            a = coord * (2.0**k) * math.pi
            chans += [torch.sin(a), torch.cos(a)]
    return torch.stack(chans, 0)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv1(x), 0.2)
        return F.leaky_relu(self.conv2(x), 0.2)


class DeformUNet(nn.Module):
    """Time-conditioned U-Net: frame indices (B,) -> deformation maps (B, 3, R, R) in local units.

    Args:
        resolution: chart texels per side (a power of two, at least ``2 ** depth``).
        channels: feature channels at full resolution (doubled per level, capped at 8x).
        depth: number of downsamplings.
        num_frames: frames of the sequence (the time embedding's period).
        pe_freqs: frequencies of the chart positional encoding.
        scale: output multiplier (the deformation is ``scale * network``).
    """

    def __init__(self, resolution: int = 64, channels: int = 16, depth: int = 4, num_frames: int = 1,
                 pe_freqs: int = 6, scale: float = 1.0):
        super().__init__()
        if resolution % (2**depth):
            raise ValueError(f"U-Net resolution {resolution} must be divisible by 2**depth = {2 ** depth}")
        self.resolution, self.num_frames, self.scale = int(resolution), int(num_frames), float(scale)
        self.register_buffer("pe", positional_encoding(resolution, pe_freqs), persistent=False)
        cin = 4 * pe_freqs + TIME_CHANNELS
        widths = [min(channels * 2**i, channels * 8) for i in range(depth + 1)]
        self.inc = _Block(cin, widths[0])
        self.down = nn.ModuleList(_Block(widths[i], widths[i + 1], stride=2) for i in range(depth))
        self.up = nn.ModuleList(_Block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth)))
        self.out = nn.Conv2d(widths[0], 3, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, r = len(frames), self.resolution
        temb = time_embedding(frames.reshape(-1), self.num_frames).to(self.pe)
        x = torch.cat([self.pe[None].expand(b, -1, -1, -1), temb[:, :, None, None].expand(-1, -1, r, r)], 1)
        skips = [self.inc(x)]
        for blk in self.down:
            skips.append(blk(skips[-1]))
        x = skips.pop()
        for blk in self.up:
            s = skips.pop()
            x = F.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=False)
            x = blk(torch.cat([x, s], 1))
        return self.out(x) * self.scale


def sample_chart(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear read of ``maps (B, C, R, R)`` at chart ``coords (N, 2)`` in [-1, 1] -> (B, N, C)."""
    b = maps.shape[0]
    grid = coords.to(maps)[None, None].expand(b, 1, -1, 2)
    out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0].permute(0, 2, 1)


def tangent_to_local(R: torch.Tensor, centroids: torch.Tensor, head_center: torch.Tensor) -> torch.Tensor:
    """(..., F, 3, 3) matrices taking a U-Net offset in each triangle's tangent frame to its local frame.

    ``R`` (..., F, 3, 3) are the triangle frames (columns a0, normal, a2; :func:`.binding.face_frames`),
    ``centroids`` (..., F, 3). The tangent frame (columns, mirroring a0, normal, a2): t1 = the azimuth
    direction around ``head_center`` (the chart's u axis) made tangent, the normal, t2 = t1 x normal
    (the chart's v axis, up to sign). Unlike the local frames, whose first axis follows an arbitrary
    edge, these turn smoothly over the surface, so a smooth map gives smooth motion, and a constant
    output moves every Gaussian along its normal. Units stay triangle sizes.
    """
    n = R[..., 1]
    up = torch.zeros_like(centroids)
    up[..., 1] = 1.0
    az = torch.linalg.cross(up, centroids - head_center)
    t1 = az - (az * n).sum(-1, keepdim=True) * n
    t1 = torch.where(t1.norm(dim=-1, keepdim=True) > 1e-9, t1, R[..., 0])  # at the top pole: any tangent
    t1 = F.normalize(t1, dim=-1)
    tangent = torch.stack([t1, n, torch.linalg.cross(t1, n)], dim=-1)
    return R.transpose(-1, -2) @ tangent


__all__ = ["DeformUNet", "tangent_to_local", "face_chart", "time_embedding", "positional_encoding", "sample_chart", "TIME_CHANNELS"]
