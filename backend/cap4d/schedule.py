"""CAP4D's noise schedule (the exact ᾱ table) and its DDIM scheduler on diffusers.

The MMDM was trained with a schedule that a scheduler built from betas alone does not reproduce:
Stable Diffusion's "scaled linear" β (√β linear from √0.00085 to √0.012, 1000 steps), rescaled to zero
terminal SNR (Lin et al. 2024), β clamped at 0.99, and then the log-SNR shifted by log √(1/7) (the
resolution/number-of-images shift for 64² latents and 8 − 1 generated views). The resulting ᾱ[0] is
0.99775 while the β derived from the shifted table starts at 0, so :func:`make_ddim_scheduler` installs
the table itself on diffusers' ``DDIMScheduler`` (η = 0, ``leading`` spacing + 1 like upstream's
``range(0, 1000, 1000 // S) + 1``, the last step going to ᾱ[0]).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import DDIMScheduler

__all__ = ["TRAIN_TIMESTEPS", "cap4d_alphas_cumprod", "make_ddim_scheduler"]

TRAIN_TIMESTEPS = 1000


def cap4d_alphas_cumprod(num_train_timesteps: int = TRAIN_TIMESTEPS, beta_start: float = 0.00085,
                         beta_end: float = 0.012, views: int = 8, latent_size: int = 64) -> np.ndarray:
    """The ᾱ table (float64) the public MMDM was trained with."""
    betas = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_train_timesteps, dtype=np.float64) ** 2
    # zero terminal SNR: shift √ᾱ so that its last value is 0, rescale so its first value is unchanged
    root = np.sqrt(np.cumprod(1.0 - betas))
    first, last = root[0], root[-1]
    root = (root - last) * first / (first - last)
    abar = root ** 2
    betas = 1.0 - np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    betas = np.minimum(betas, 0.99)
    abar = np.cumprod(1.0 - betas)
    # log-SNR shift for (64² / (latent² · (views − 1))), square-rooted, as the model was trained
    shift = math.sqrt(64 ** 2 / (latent_size ** 2 * (views - 1)))
    with np.errstate(divide="ignore"):
        log_snr = np.log(abar) - np.log1p(-abar) + math.log(shift)
    return 1.0 / (1.0 + np.exp(-log_snr))


def make_ddim_scheduler(alphas_cumprod: np.ndarray | None = None) -> DDIMScheduler:
    """diffusers' DDIM (ε-prediction, η = 0) carrying CAP4D's ᾱ table."""
    table = cap4d_alphas_cumprod() if alphas_cumprod is None else np.asarray(alphas_cumprod, dtype=np.float64)
    sched = DDIMScheduler(num_train_timesteps=len(table), beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False,
                          steps_offset=1, timestep_spacing="leading")
    sched.alphas_cumprod = torch.from_numpy(table)
    sched.final_alpha_cumprod = torch.tensor(float(table[0]), dtype=torch.float64)
    return sched
