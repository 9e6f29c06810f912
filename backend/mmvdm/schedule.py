"""CogVideoX-2B's DDIM schedule for the MMVDM sampler, and the DDIM / VRS / SDEdit step maths.

Scheduler
    :func:`make_scheduler` builds diffusers' ``CogVideoXDDIMScheduler`` with CogVideoX-2B's
    ``scheduler_config.json`` (:data:`SCHEDULER_CONFIG`; docs/architecture.md,
    "MMVDM scheduler"): v-prediction, zero terminal SNR, SNR shift 3,
    trailing spacing (100 steps: 999, 989, …, 9; 50: 999, 979, …, 19), scaled-linear betas
    0.00085 → 0.012, no clipping, ᾱ = 1 after the last step. The DDIM update itself is done here in
    float32 with the scheduler's ``alphas_cumprod`` (identical to ``scheduler.step`` when the step count
    divides 1000, correct for any count, and independent of the model's dtype).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import MVP4DError, bad_input


#: CogVideoX-2B ``scheduler/scheduler_config.json`` (docs/architecture.md, "MMVDM scheduler")
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "snr_shift_scale": 3.0,
    "timestep_spacing": "trailing",
    "clip_sample": False,
    "set_alpha_to_one": True,
    "steps_offset": 0,
}


def make_scheduler(config: dict[str, Any] | None = None):
    """``CogVideoXDDIMScheduler`` with CogVideoX-2B's config, updated by ``config`` (e.g. the weights
    folder's ``scheduler_config.json``). Only v-prediction is supported (``WEIGHTS_MISMATCH`` otherwise)."""
    from diffusers import CogVideoXDDIMScheduler

    cfg = dict(SCHEDULER_CONFIG)
    if config:
        cfg.update({k: v for k, v in dict(config).items() if not k.startswith("_")})
    if cfg.get("prediction_type") != "v_prediction":
        raise MVP4DError("WEIGHTS_MISMATCH", f"the scheduler config predicts {cfg.get('prediction_type')!r}; the "
                         "MMVDM sampler needs v_prediction (CogVideoX-2B)")
    return CogVideoXDDIMScheduler.from_config(cfg)


def schedule(scheduler, steps: int) -> tuple[list[int], list[float]]:
    """Timesteps of a ``steps``-step run and ᾱ at each of them followed by the final ᾱ (len steps + 1)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise bad_input(f"the number of sampling steps must be a positive integer, got {steps!r}")
    scheduler.set_timesteps(steps)
    ts = [int(t) for t in scheduler.timesteps]
    ac = scheduler.alphas_cumprod
    alphas = [float(ac[t]) for t in ts] + [float(scheduler.final_alpha_cumprod)]
    return ts, alphas


def _ddim_step(x: torch.Tensor, v: torch.Tensor, a_t: float, a_prev: float) -> torch.Tensor:
    """Deterministic DDIM (eta 0) for v-prediction from ᾱ_t to ᾱ_prev (as CogVideoXDDIMScheduler.step)."""
    x0 = math.sqrt(a_t) * x - math.sqrt(1.0 - a_t) * v
    c = math.sqrt((1.0 - a_prev) / (1.0 - a_t))
    return c * x + (math.sqrt(a_prev) - math.sqrt(a_t) * c) * x0


def _vrs_renoise(x_next: torch.Tensor, a_i: float, a_next: float, noise: torch.Tensor) -> torch.Tensor:
    """Diffusion² Alg. 1 l.14 in VP form: back from ᾱ_{i+1} to ᾱ_i with noise std scaled by (σ_i − σ_{i+1})."""
    ratio = math.sqrt(a_i / a_next)
    coef = math.sqrt(1.0 - a_i) - math.sqrt(a_i * (1.0 - a_next) / a_next)
    return ratio * x_next + coef * noise


def _start_index(steps: int, strength: float) -> int:
    """First step of an SDEdit run keeping a fraction ``strength`` of a ``steps``-step schedule."""
    if not 0.0 < float(strength) <= 1.0:
        raise bad_input(f"strength must be in (0, 1], got {strength!r}")
    return min(steps - 1, max(0, int(round((1.0 - float(strength)) * steps))))
