"""The compute cost of CAP4D generation: FLOPs of one forward and of each quality preset.

One forward = one stochastic I/O group of V = 8 images (references + targets), doubled for classifier-free
guidance (conditional and unconditional in one batch of 2 × 8 images). Its FLOPs are counted by torch's
FLOP counter (``torch.utils.flop_counter``: 2·m·n·k per matmul/convolution, attention matmuls included)
running the UNet on the **meta device**: shapes only, no memory and no arithmetic, so the full-size count
(14.03 TFLOP at 512²) takes seconds on any machine. A preset needs ⌈images / (8 − R)⌉ groups per step
(R = min(references, 4) = 1 for one photo) × its DDIM steps.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..estimates import cap4d_flops
from .config import NUM_VIEWS, sd21_upstream_config, unet_config_from_upstream
from .unet import MMDMUNet

__all__ = ["forward_flops", "preset_cost"]


@lru_cache(maxsize=8)
def _flops(model_channels: int, views: int, latent: int, batch: int) -> int:
    cfg = dict(sd21_upstream_config(), model_channels=model_channels, num_head_channels=min(64, model_channels))
    with torch.device("meta"):
        unet = MMDMUNet.from_config(unet_config_from_upstream(cfg))
        x = torch.empty(batch, views, 4, latent, latent)
        args = (x, torch.zeros(batch, views, dtype=torch.long), x, torch.ones(batch, views, 1, 1, 1),
                torch.empty(batch, views, latent, latent, cfg["condition_channels"]))
        with FlopCounterMode(display=False) as counter:
            unet(*args)
    return int(counter.get_total_flops())


def forward_flops(views: int = NUM_VIEWS, resolution: int = 512, cfg: bool = True, model_channels: int = 320) -> int:
    """FLOPs of one UNet call on ``views`` images at ``resolution``² (× 2 with CFG)."""
    return _flops(int(model_channels), int(views), int(resolution) // 8, 2 if cfg else 1)


def preset_cost(quality: str, references: int = 1, max_refs: int = 4) -> dict[str, Any]:
    """Forwards and FLOPs of a CAP4D quality preset (:data:`~backend.protocol.CAP4D_QUALITY`); the forward
    count is :func:`backend.estimates.cap4d_flops`'s, the FLOPs per forward counted here."""
    plan = cap4d_flops(quality, references, max_refs)
    per = forward_flops(NUM_VIEWS, plan["resolution"])
    return {"quality": quality, **{k: v for k, v in plan.items() if k != "flops"}, "flops_per_forward": per,
            "flops": plan["forwards"] * per}
