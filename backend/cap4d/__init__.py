"""CAP4D's public MMDM (morphable multi-view image diffusion model) as a generator.

Modules: ``config`` (network configurations), ``attention`` (self-attention over views), ``unet`` (the
denoiser on diffusers' UNet2DConditionModel), ``checkpoint`` (reading and mapping the ``.ckpt``),
``fixture`` (golden-fixture evaluation). CAP4D's weights are CC BY-NC 4.0 (derived from Stable
Diffusion 2.1, OpenRAIL++): not for commercial use. Our code is our own.
"""

LICENCE = ("CAP4D MMDM weights: CC BY-NC 4.0 (derived from Stable Diffusion 2.1, CreativeML OpenRAIL++-M use "
           "restrictions apply): not for commercial use.")
