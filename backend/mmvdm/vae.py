"""The MMVDM's latent space: diffusers' ``AutoencoderKLCogVideoX`` with the paper's conventions (§3.2).

The reference image and every view's video are encoded separately (a view is one batch element of the
VAE, so nothing mixes across views; with ``enable_slicing()`` they run one at a time). A view of
F = 1 + 4·F̃ frames becomes 1 + F̃ latent frames; the latents are multiplied by the VAE config's
``scaling_factor`` (after subtracting ``shift_factor`` when the config has one) and decoding undoes it.
Encoding uses the posterior mode (deterministic) unless ``sample=True`` (then the posterior is sampled
with the given generator). Images are float in [-1, 1]; latents come back float32, images float32
clamped to [-1, 1]; inputs are cast to the VAE's dtype and device.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLCogVideoX

from ..errors import MVP4DError

__all__ = ["MMVDMVae"]


class MMVDMVae:
    """Wrapper around ``AutoencoderKLCogVideoX``: ``encode_reference``, ``encode_views``, ``decode_views``."""

    def __init__(self, vae: AutoencoderKLCogVideoX):
        self.vae = vae
        cfg = vae.config
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(cfg.get("shift_factor") or 0.0)
        self.latent_channels = int(cfg.latent_channels)
        self.temporal_compression = int(cfg.temporal_compression_ratio)
        self.spatial_compression = 2 ** (len(cfg.block_out_channels) - 1)

    # ------------------------------------------------------------------------------------------- switches
    def enable_slicing(self) -> None:
        """Encode/decode one view (batch element) at a time."""
        self.vae.enable_slicing()

    def disable_slicing(self) -> None:
        self.vae.disable_slicing()

    def enable_tiling(self, **kwargs) -> None:
        """Spatial tiles (diffusers' defaults are tuned for >= ~480×720 frames); kwargs go to diffusers."""
        self.vae.enable_tiling(**kwargs)

    def disable_tiling(self) -> None:
        self.vae.disable_tiling()

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    # ------------------------------------------------------------------------------------------- encoding
    def _check_size(self, height: int, width: int) -> None:
        s = self.spatial_compression
        if height % s or width % s:
            raise MVP4DError("BAD_INPUT", f"image size {height}×{width} is not a multiple of {s}",
                             f"Use frames whose height and width are multiples of {s} (e.g. 512×512).")

    @torch.no_grad()
    def _encode(self, videos: torch.Tensor, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
        """(N, 3, F, H, W) in [-1, 1] -> (N, C, T, h, w) scaled latents, float32."""
        dist = self.vae.encode(videos.to(device=self.device, dtype=self.dtype)).latent_dist
        z = dist.sample(generator=generator) if sample else dist.mode()
        return ((z.float() - self.shift_factor) * self.scaling_factor)

    def encode_reference(self, images: torch.Tensor, *, sample: bool = False,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1] -> (B, C, H/8, W/8) latents (one latent frame each)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise MVP4DError("BAD_INPUT", f"reference images must be (B, 3, H, W), got {tuple(images.shape)}")
        self._check_size(images.shape[-2], images.shape[-1])
        return self._encode(images[:, :, None], sample, generator)[:, :, 0]

    def encode_views(self, videos: torch.Tensor, *, sample: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """(V, F, 3, H, W) videos in [-1, 1], F = 1 + 4k -> (V, 1 + k, C, H/8, W/8) latents."""
        if videos.ndim != 5 or videos.shape[2] != 3:
            raise MVP4DError("BAD_INPUT", f"view videos must be (V, F, 3, H, W), got {tuple(videos.shape)}")
        frames = videos.shape[1]
        r = self.temporal_compression
        if frames < 1 or (frames - 1) % r:
            raise MVP4DError("BAD_INPUT", f"{frames} frames per view is not 1 + {r}·k",
                             f"Use 1 + {r}·k frames per view (e.g. 9, 49 or 89).")
        self._check_size(videos.shape[-2], videos.shape[-1])
        z = self._encode(videos.permute(0, 2, 1, 3, 4), sample, generator)
        return z.permute(0, 2, 1, 3, 4)

    # ------------------------------------------------------------------------------------------- decoding
    @torch.no_grad()
    def decode_views(self, latents: torch.Tensor) -> torch.Tensor:
        """(V, T, C, h, w) scaled latents -> (V, 1 + 4·(T − 1), 3, 8h, 8w) frames in [-1, 1], float32.

        T must be odd: diffusers' CogVideoX decoder works in chunks of 2 latents and only treats the
        first latent as a single frame when the first chunk is odd, so an even T decodes to 4·T frames
        (checked with diffusers 0.42.1). 49 and 89 frames (13 and 23 latents) are fine.
        """
        if latents.ndim != 5 or latents.shape[2] != self.latent_channels:
            raise MVP4DError("BAD_INPUT", f"latents must be (V, T, {self.latent_channels}, h, w), "
                             f"got {tuple(latents.shape)}")
        if latents.shape[1] % 2 == 0:
            raise MVP4DError("BAD_INPUT", f"cannot decode {latents.shape[1]} latent frames (an even count)",
                             "Generate 1 + 8·k frames per view (odd latent counts, e.g. 9, 49 or 89 frames).")
        z = latents.permute(0, 2, 1, 3, 4).float() / self.scaling_factor + self.shift_factor
        frames = self.vae.decode(z.to(device=self.device, dtype=self.dtype)).sample
        return frames.float().clamp(-1.0, 1.0).permute(0, 2, 1, 3, 4)
