"""Positional encodings of the MMVDM token layout (paper §3.2).

Every view's latent video gets CogVideoX's own fixed 3-D sin/cos encoding (``get_3d_sincos_pos_embed``
with the same grid, interpolation scales and [temporal D/4 ; spatial 3D/4] split as
``CogVideoXPatchEmbed``), replicated across views. The reference latent gets the same sin/cos *spatial*
part and a learned temporal part (a D/4 vector, initialised to the sin/cos encoding of t = 0).
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid, get_3d_sincos_pos_embed

__all__ = ["video_positional_embedding", "reference_positional_embedding", "initial_reference_temporal"]


def video_positional_embedding(
    embed_dim: int, frames: int, height_tokens: int, width_tokens: int,
    spatial_interpolation_scale: float, temporal_interpolation_scale: float,
    device: torch.device | None = None,
) -> torch.Tensor:
    """(frames · h · w, D) float32, frame-major then row-major: the stock CogVideoX video encoding."""
    pe = get_3d_sincos_pos_embed(
        embed_dim, (width_tokens, height_tokens), frames,
        spatial_interpolation_scale, temporal_interpolation_scale, device=device, output_type="pt",
    )
    return pe.flatten(0, 1)


def reference_positional_embedding(
    temporal: torch.Tensor, embed_dim: int, height_tokens: int, width_tokens: int,
    spatial_interpolation_scale: float, device: torch.device | None = None,
) -> torch.Tensor:
    """(h · w, D): [learned temporal (D/4) broadcast over tokens ; sin/cos spatial (3D/4)] for the reference."""
    spatial = get_3d_sincos_pos_embed(
        embed_dim, (width_tokens, height_tokens), 1, spatial_interpolation_scale, 1.0, device=device, output_type="pt"
    )[0, :, embed_dim // 4:]
    spatial = spatial.to(temporal.dtype)
    return torch.cat([temporal.reshape(1, -1).expand(spatial.shape[0], -1), spatial], dim=-1)


def initial_reference_temporal(embed_dim: int) -> torch.Tensor:
    """(D/4,) float32: CogVideoX's sin/cos temporal encoding of frame 0 (the learned encoding's start)."""
    return get_1d_sincos_pos_embed_from_grid(embed_dim // 4, torch.zeros(1), output_type="pt")[0].float()
