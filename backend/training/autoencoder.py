"""A small CogVideoX-style VAE trained on a training dataset — the stand-in for CogVideoX-2B's pretrained
VAE in CPU experiments (the real MMVDM keeps CogVideoX's VAE frozen; no such weights exist here, and a
*random* VAE does not decode what it encodes, so image metrics would be meaningless).

:func:`train_vae` fits ``AutoencoderKLCogVideoX`` (diffusers; causal 3-D convolutions, 8× spatial and 4×
temporal compression like the real one) to items sampled from the dataset exactly as the MMVDM sees them
(head crops on white, :class:`TrainingDataset.sample`): single frames every step and a 1 + 4k-frame
clip every ``clip_every`` steps (decoding video is several times the cost of images), loss
L1 + MSE + β·KL. Afterwards the latent scale is set like Stable Diffusion's: ``scaling_factor`` = 1 / std of
the posterior means over fresh samples, so the diffusion model sees unit-variance latents. The result is
saved as a diffusers VAE folder (config.json + safetensors) that ``model.vae`` of a training config and
:func:`backend.mmvdm.weights.save_mmvdm` accept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fsutil import atomic_dir
from .data import MultiDataset, TrainingDataset

__all__ = ["small_vae_config", "train_vae", "vae_reconstruction_psnr"]


def small_vae_config(latent_channels: int = 16, width: int = 16) -> dict[str, Any]:
    """A CPU-sized ``AutoencoderKLCogVideoX`` config: 4 levels (8× spatial), 4× temporal compression."""
    return dict(in_channels=3, out_channels=3, latent_channels=latent_channels,
                block_out_channels=(width // 2, width, width, width), down_block_types=("CogVideoXDownBlock3D",) * 4,
                up_block_types=("CogVideoXUpBlock3D",) * 4, layers_per_block=1, norm_num_groups=8,
                temporal_compression_ratio=4, sample_height=64, sample_width=64)


def _clips(data: MultiDataset | TrainingDataset, rng: np.random.Generator, views: int, frames: int, size: int,
           n: int) -> torch.Tensor:
    """(n·views, 3, frames, size, size) in [-1, 1] from ``n`` sampled items."""
    out = []
    for _ in range(n):
        it = data.sample(rng, views, frames, size)
        x = torch.from_numpy(it.images).float().div(127.5).sub(1.0)  # (V, F, D, D, 3)
        out.append(x.permute(0, 4, 1, 2, 3))
    return torch.cat(out)


def train_vae(data: MultiDataset | TrainingDataset, out_dir: str | Path, *, steps: int = 400, size: int = 64,
              clip_frames: int = 9, images_per_step: int = 8, clip_every: int = 2, lr: float = 2e-3,
              kl_weight: float = 1e-6, seed: int = 0, config: dict[str, Any] | None = None,
              time_budget_s: float | None = None, log: Callable[[str], None] | None = None,
              replace: bool = False) -> dict[str, Any]:
    """Train the stand-in VAE and save it to ``out_dir`` (atomic). Returns stats (steps, time, losses, scale).

    An existing ``out_dir`` is replaced only with ``replace=True`` (its caller owns it), else ``OUTPUT_EXISTS``."""
    from diffusers import AutoencoderKLCogVideoX

    say = log or (lambda m: None)
    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(**(config or small_vae_config()))
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    rng = np.random.default_rng([seed, 17])
    t0 = time.time()
    losses = []
    done = 0
    for step in range(steps):
        batches = [_clips(data, rng, 4, 1, size, max(1, images_per_step // 4))]
        if clip_every and step % clip_every == 0:
            batches.append(_clips(data, rng, 1, clip_frames, size, 1))
        loss_total = 0.0
        opt.zero_grad(set_to_none=True)
        for x in batches:
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample
            loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + kl_weight * post.kl().mean()
            (loss / len(batches)).backward()
            loss_total += float(loss.detach()) / len(batches)
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss_total)
        done = step + 1
        if step % 50 == 0:
            say(f"vae step {step}/{steps} loss {loss_total:.4f}")
        if time_budget_s is not None and time.time() - t0 > time_budget_s:
            say(f"vae: time budget reached after {done} steps")
            break
    vae.eval()
    with torch.no_grad():  # latent scale: 1 / std of posterior means (SD-style), on fresh samples
        x = torch.cat([_clips(data, np.random.default_rng([seed, 18]), 4, 1, size, 4)])
        z = vae.encode(x).latent_dist.mode()
        y = _clips(data, np.random.default_rng([seed, 19]), 1, clip_frames, size, 2)
        z2 = vae.encode(y).latent_dist.mode()
        std = float(torch.cat([z.flatten(), z2.flatten()]).std())
    scale = 1.0 / max(std, 1e-6)
    vae.register_to_config(scaling_factor=scale)
    out = Path(out_dir)
    with atomic_dir(out, replace=replace) as tmp:
        vae.save_pretrained(str(tmp), safe_serialization=True)
    stats = {"steps": done, "time_s": round(time.time() - t0, 1), "final_loss": float(np.mean(losses[-20:])),
             "scaling_factor": scale, "parameters": sum(p.numel() for p in vae.parameters())}
    stats["psnr"] = vae_reconstruction_psnr(vae, data, size=size, seed=seed + 1)
    say(f"vae: {stats}")
    return stats


@torch.no_grad()
def vae_reconstruction_psnr(vae, data: MultiDataset | TrainingDataset, *, size: int = 64, seed: int = 1,
                            clip_frames: int = 9, n: int = 4) -> float:
    """PSNR (dB) of encode → decode (posterior mode) on ``n`` sampled clips — the ceiling of any
    generated image's PSNR through this VAE."""
    x = _clips(data, np.random.default_rng([seed, 23]), 1, clip_frames, size, n)
    rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    mse = float((((rec + 1) / 2 - (x + 1) / 2) ** 2).mean())
    return 10.0 * float(np.log10(1.0 / max(mse, 1e-12)))
