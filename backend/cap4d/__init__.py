"""CAP4D's public MMDM (morphable multi-view image diffusion model) as a generator.

Modules: ``config`` (network configurations), ``attention`` (self-attention over views), ``unet`` (the
denoiser on diffusers' UNet2DConditionModel), ``checkpoint`` (reading and mapping the ``.ckpt``),
``fixture`` (golden-fixture evaluation), ``weights`` (the safetensors folder), ``schedule``/``sampler``
(DDIM with the exact ᾱ table, stochastic I/O), ``latents`` (VAE), ``mouth``/``maps`` (conditioning). CAP4D's weights are CC BY-NC 4.0 (derived from Stable
Diffusion 2.1, OpenRAIL++): not for commercial use. Our code is our own.
"""

from ..protocol import CAP4D_LICENCE as LICENCE  # one definition, torch-free (the add-on shows it too)

__all__ = ["LICENCE"]
