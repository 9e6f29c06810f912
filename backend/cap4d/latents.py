"""Images <-> CAP4D latents through the Stable Diffusion VAE (``AutoencoderKL``) of the checkpoint.

Latents are a **sample** of the VAE posterior times 0.18215 (as the MMDM was trained), drawn with the
caller's generator so that a job is reproducible. Images are (n, 3, H, W) in [0, 1] at the API and
[-1, 1] inside. ``chunk`` bounds how many images go through the VAE at once (the VAE's activations at
512² dominate its memory); diffusers' slicing/tiling can be switched on by the caller (vram modes).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

__all__ = ["encode_images", "decode_latents"]


@torch.no_grad()
def encode_images(vae: AutoencoderKL, images: torch.Tensor, generator: torch.Generator | None = None,
                  chunk: int = 4) -> torch.Tensor:
    """(n, 3, H, W) in [0, 1] -> (n, 4, H/8, W/8) float32 latents (posterior sample × scaling factor)."""
    out = []
    for part in images.split(chunk):
        x = (part.to(vae.device, vae.dtype) * 2.0 - 1.0)
        dist = vae.encode(x).latent_dist
        noise = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32).to(dist.mean.device)
        z = dist.mean.float() + dist.std.float() * noise
        out.append(z.cpu() * vae.config.scaling_factor)
    return torch.cat(out)


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, latents: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """(n, 4, h, w) latents -> (n, 3, 8h, 8w) float32 images in [0, 1] (on the CPU)."""
    out = []
    for part in latents.split(chunk):
        img = vae.decode(part.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
        out.append(((img.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu())
    return torch.cat(out)
