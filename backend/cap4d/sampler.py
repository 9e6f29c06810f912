"""CAP4D's stochastic I/O sampler: many target views from a few references with an 8-view model.

The MMDM sees V = 8 images per forward: R = min(#references, ``max_refs``) references and G = V − R
targets. To generate N ≫ G targets consistently, every denoising step

1. splits all N targets at random into ⌈N / G⌉ groups of G (the last group is filled up with other
   targets whose estimates are discarded, so **every target gets exactly one noise estimate per step**),
2. gives each group its own random choice of R references,
3. runs the groups (``groups_per_batch`` at a time, conditional and unconditional batched together) and
   combines the two with classifier-free guidance ``ε = ε_u + s (ε_c − ε_u)``; the unconditional branch
   sees all-zero conditioning maps **and** all-zero reference latents (the reference mask stays),
4. applies one DDIM (η = 0) update to all targets with the step's ε.

All randomness (initial noise, groupings, reference choices) comes from ``seed``, so a run is
reproducible and independent of ``groups_per_batch`` (up to kernel rounding). ``check`` is called
between batches (cancel), ``progress(done_steps, total_steps)`` after each step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .schedule import make_ddim_scheduler

__all__ = ["SamplerSettings", "StochasticIOSampler", "group_schedule"]


@dataclass(frozen=True)
class SamplerSettings:
    steps: int = 50
    guidance: float = 2.0
    views: int = 8  # images per forward (the model's)
    max_refs: int = 4
    groups_per_batch: int = 1  # groups per UNet call (×2 images with batched CFG)
    seed: int = 0
    cfg_batched: bool = True  # False: the unconditional and conditional halves in two calls (half the memory)


def group_schedule(rng: np.random.Generator, n_targets: int, n_refs: int, views: int, max_refs: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step's random grouping: (targets (groups, G), keep (groups, G) bool, refs (groups, R)).

    ``keep`` is False only for the fillers of the last group (targets already estimated in this step).
    """
    r = min(n_refs, max_refs)
    g = views - r
    if g < 1:
        raise ValueError(f"{views} views leave no room for targets next to {r} references")
    n_groups = -(-n_targets // g)
    order = rng.permutation(n_targets)
    pad = n_groups * g - n_targets
    keep = np.ones(n_groups * g, dtype=bool)
    if pad:
        fillers = rng.choice(order[: n_targets - (g - pad)], size=pad, replace=False) if n_targets >= g else \
            rng.choice(n_targets, size=pad, replace=True)
        order = np.concatenate([order, fillers])
        keep[n_targets:] = False
    refs = np.stack([rng.permutation(n_refs)[:r] for _ in range(n_groups)])
    return order.reshape(n_groups, g), keep.reshape(n_groups, g), refs


class StochasticIOSampler:
    """Runs the MMDM (``unet(x, timesteps, z_input, ref_mask, pos_enc)``) over all targets of a job."""

    def __init__(self, unet: torch.nn.Module, settings: SamplerSettings, alphas_cumprod: np.ndarray | None = None):
        self.unet = unet
        self.s = settings
        self.scheduler = make_ddim_scheduler(alphas_cumprod)

    @torch.no_grad()
    def sample(
        self,
        ref_latents: torch.Tensor,
        ref_maps: torch.Tensor,
        target_maps: torch.Tensor,
        check: Callable[[], None] = lambda: None,
        progress: Callable[[int, int], None] = lambda done, total: None,
        device: torch.device | str | None = None,
        groups: Callable[..., list[torch.Tensor]] | None = None,
        step_checkpoint: Any = None,
    ) -> torch.Tensor:
        """Latents (N, C, h, w) float32 for the N targets.

        ``ref_latents`` (n_ref, C, h, w) clean latents; ``ref_maps`` (n_ref, h, w, K) and ``target_maps``
        (N, h, w, K) conditioning maps (their reference-mask channel already set).

        ``groups(x, t, batches, check)``: the step's ε of each batch ``(targets, refs)`` — the units of
        one step, independent of each other (None: :meth:`local_groups`, one after the other here; the
        Ray executor runs them as tasks). ``step_checkpoint``: an object with ``load() -> (step, x) |
        None`` and ``save(step, x)``: ``x`` after every step, so an interrupted run resumes at its last
        finished step (the groupings of earlier steps are replayed from the seed, no model call).
        """
        s = self.s
        dev = torch.device(device) if device is not None else next(self.unet.parameters()).device
        n, n_ref = target_maps.shape[0], ref_latents.shape[0]
        if n_ref < 1:
            raise ValueError("the stochastic I/O sampler needs at least one reference")
        c, h, w = ref_latents.shape[1:]
        gen = torch.Generator().manual_seed(int(s.seed))
        rng = np.random.default_rng(int(s.seed))
        x = torch.randn((n, c, h, w), generator=gen, dtype=torch.float32).to(dev)
        ref_latents, ref_maps, target_maps = ref_latents.float().to(dev), ref_maps.to(dev), target_maps.to(dev)
        self.scheduler.set_timesteps(s.steps)
        timesteps = self.scheduler.timesteps
        inputs = (ref_latents, ref_maps, target_maps)
        groups = groups or (lambda x_, t_, batches, chk: self.local_groups(x_, t_, batches, chk, *inputs))
        first = 0
        saved = step_checkpoint.load() if step_checkpoint is not None else None
        if saved is not None:
            first, x = saved[0], saved[1].float().to(dev)
            progress(first, len(timesteps))
        for i, t in enumerate(timesteps):
            targets, keep, refs = group_schedule(rng, n, n_ref, s.views, s.max_refs)
            if i < first:
                continue  # replayed only to keep the random stream of later steps
            slices = [slice(b, b + s.groups_per_batch) for b in range(0, len(targets), s.groups_per_batch)]
            eps = torch.zeros_like(x)
            for sl, e in zip(slices, groups(x, int(t), [(targets[sl], refs[sl]) for sl in slices], check)):
                k = torch.from_numpy(keep[sl].reshape(-1)).to(dev)
                idx = torch.from_numpy(targets[sl].reshape(-1)).to(dev)
                eps[idx[k]] = e.to(dev).reshape(-1, c, h, w)[k]
            x = self.scheduler.step(eps, t, x, eta=0.0).prev_sample.float()
            if step_checkpoint is not None and i + 1 < len(timesteps):
                step_checkpoint.save(i + 1, x)
            progress(i + 1, len(timesteps))
        return x

    def local_groups(self, x: torch.Tensor, t: int, batches: list[tuple[np.ndarray, np.ndarray]],
                     check: Callable[[], None], ref_latents: torch.Tensor, ref_maps: torch.Tensor,
                     target_maps: torch.Tensor) -> list[torch.Tensor]:
        """The step's units here, one after the other (``check`` before each): ε of each batch."""
        out = []
        for targets, refs in batches:
            check()
            out.append(self._guided_eps(x, t, targets, refs, ref_latents, ref_maps, target_maps))
        return out

    def _guided_eps(self, x: torch.Tensor, t: int, targets: np.ndarray, refs: np.ndarray, ref_latents: torch.Tensor,
                    ref_maps: torch.Tensor, target_maps: torch.Tensor) -> torch.Tensor:
        """ε for the targets of ``len(targets)`` groups: (B, G, C, h, w), CFG applied."""
        b, r = refs.shape
        ti, ri = torch.from_numpy(targets).to(x.device), torch.from_numpy(refs).to(x.device)
        z_ref = ref_latents[ri]  # (B, R, C, h, w)
        noisy = torch.cat([z_ref, x[ti]], dim=1)  # references' input is replaced by z_input in the UNet
        z_in = torch.cat([z_ref, torch.zeros_like(x[ti])], dim=1)
        maps = torch.cat([ref_maps[ri], target_maps[ti]], dim=1)
        v = noisy.shape[1]
        ref_mask = torch.zeros(b, v, 1, 1, 1, device=x.device, dtype=torch.uint8)
        ref_mask[:, :r] = 1
        ts = torch.full((b, v), t, device=x.device, dtype=torch.long)
        if self.s.guidance == 1.0:
            return self.unet(noisy, ts, z_in, ref_mask, maps)[:, r:].float()
        if self.s.cfg_batched:
            out = self.unet(torch.cat([noisy, noisy]), torch.cat([ts, ts]), torch.cat([torch.zeros_like(z_in), z_in]),
                            torch.cat([ref_mask, ref_mask]), torch.cat([torch.zeros_like(maps), maps]))
            uncond, cond = out[:, r:].float().chunk(2)
        else:
            uncond = self.unet(noisy, ts, torch.zeros_like(z_in), ref_mask, torch.zeros_like(maps))[:, r:].float()
            cond = self.unet(noisy, ts, z_in, ref_mask, maps)[:, r:].float()
        return uncond + self.s.guidance * (cond - uncond)
