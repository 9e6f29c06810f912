"""Sampling the MMVDM: the joint sampler and the two peer samplers (Diffusion²-style score
composition, 4DVD-style low-resolution preview). The DDIM schedule is in :mod:`.schedule`, generation
modes 1–4 and multi-view CFG in :mod:`.guidance`, the model calls in :mod:`.denoiser`.

Samplers (``sampler=``)
    * ``"joint"``: the paper's — one forward of all views and frames per step (+ CFG passes).
    * ``"composed"`` (Diffusion², Yang et al., Eq. 5 and Alg. 1): per step, the v prediction of every
      generated slot (v, t) is the convex combination ``s·v_video + (1 − s)·v_multiview`` of a
      **per-view video pass** (view v alone with all its latent frames + reference image) and a
      **per-frame multi-view pass** (all views of the pass at latent frame t only, T = 1), s = 0.5 as in
      the paper. Combining v is combining scores: both are affine in the same x_t with the same
      coefficients. Tokens per forward drop from (1 + V·T)·n to (1 + T)·n and (1 + V)·n, so attention
      memory falls ~V-fold (at the price of V + T forwards). **Variance-reducing sampling** (VRS, Alg. 1
      lines 12–14): in the first ``vrs_steps`` (5) steps, after stepping t_i → t_{i+1} the result is
      pushed back to t_i with *less* noise than the forward process would add — in VE terms
      y ← y + (σ_i − σ_{i+1})·ε instead of √(σ_i² − σ_{i+1}²)·ε, here in VP form
      ``x_i = √(ᾱ_i/ᾱ_{i+1})·x_{i+1} + (√(1 − ᾱ_i) − √(ᾱ_i(1 − ᾱ_{i+1})/ᾱ_{i+1}))·ε`` — and the step is
      redone, so the two factorisations' modes merge at a higher noise level. CFG composes the same way
      (multiview: per-view unconditional video passes; conventional: the composition with everything
      zeroed).
    * ``"preview"`` (4DVD, coarse-to-fine): the whole set (all views at once) is first sampled at 1/f
      resolution (``preview_factor`` 2: latents, clean inputs, reference and conditioning area-averaged)
      with few steps (``preview_steps``, default max(1, steps // 5)); the result is bilinearly upsampled
      and, when ``refine_strength`` > 0, used as the initialisation of a full-resolution joint run that
      starts at the timestep where a fraction ``refine_strength`` of the schedule remains (SDEdit:
      x = √ᾱ·x_preview + √(1 − ᾱ)·ε). ``refine_strength=0`` returns the upsampled preview itself (the
      quick look). The generator's ring-wide preview (``MMVDMGenerator`` with ``sampler="preview"``)
      renders its low-resolution inputs natively instead of pooling.

Determinism: all noise comes from one ``torch.Generator`` on the CPU seeded with ``seed`` (moved to
the device afterwards), DDIM is deterministic, so a run is a function of its inputs and seed (on CPU
bit-for-bit). ``check()`` is called before every step (it raises to cancel); ``progress(done, total)``
after every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as Fn

from ..contract.presets import GUIDANCE_MODES, SAMPLERS  # the one definition (the job spec validates against it)
from ..errors import bad_input
from .denoiser import _Denoiser, _model_device
from .guidance import (MAX_GUIDANCE, MAX_GUIDANCE_ANGLE, MIN_GUIDANCE, _as_scales, guidance_scale,
                       guidance_scales, mode_masks)
from .schedule import SCHEDULER_CONFIG, _ddim_step, _start_index, _vrs_renoise, make_scheduler, schedule

__all__ = [
    "SCHEDULER_CONFIG",
    "GUIDANCE_MODES",
    "SAMPLERS",
    "MIN_GUIDANCE",
    "MAX_GUIDANCE",
    "MAX_GUIDANCE_ANGLE",
    "make_scheduler",
    "schedule",
    "mode_masks",
    "guidance_scale",
    "guidance_scales",
    "downsample_latents",
    "upsample_latents",
    "sample",
]


# ---------------------------------------------------------------------------------------------
# resolution helpers (preview)
# ---------------------------------------------------------------------------------------------


def downsample_latents(x: torch.Tensor | None, factor: int) -> torch.Tensor | None:
    """Area-average the last two axes by ``factor`` (any leading shape)."""
    if x is None or factor == 1:
        return x
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    y = Fn.avg_pool2d(x.reshape(-1, 1, h, w).float(), factor)
    return y.reshape(*lead, h // factor, w // factor)


def upsample_latents(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear upsampling of the last two axes by ``factor`` (any leading shape)."""
    if factor == 1:
        return x
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    y = Fn.interpolate(x.reshape(-1, 1, h, w).float(), scale_factor=factor, mode="bilinear", align_corners=False)
    return y.reshape(*lead, h * factor, w * factor)


# ---------------------------------------------------------------------------------------------
# the sampler
# ---------------------------------------------------------------------------------------------


def _check_shapes(shape, reference_latent, conditioning, reference_conditioning, clean_latents, clean_mask):
    if len(shape) != 5:
        raise bad_input(f"latents_shape must be (V, T, C, h, w), got {tuple(shape)}")
    V, T, C, h, w = shape
    if reference_latent is not None and tuple(reference_latent.shape) != (C, h, w):
        raise bad_input(f"reference_latent must be {(C, h, w)}, got {tuple(reference_latent.shape)}")
    if conditioning is not None and (conditioning.ndim != 5 or tuple(conditioning.shape[:2]) != (V, T)
                                     or tuple(conditioning.shape[3:]) != (h, w)):
        raise bad_input(f"conditioning must be (V={V}, T={T}, Cc, {h}, {w}), got {tuple(conditioning.shape)}")
    if reference_conditioning is not None:
        if reference_latent is None:
            raise bad_input("reference_conditioning needs a reference_latent")
        if reference_conditioning.ndim != 3 or tuple(reference_conditioning.shape[1:]) != (h, w):
            raise bad_input(f"reference_conditioning must be (Cc, {h}, {w}), got {tuple(reference_conditioning.shape)}")
    if clean_mask is not None:
        if tuple(clean_mask.shape) != (V, T):
            raise bad_input(f"clean_mask must be {(V, T)}, got {tuple(clean_mask.shape)}")
        if bool(clean_mask.any()) and (clean_latents is None or tuple(clean_latents.shape) != tuple(shape)):
            raise bad_input(f"clean_latents must be {tuple(shape)} where clean_mask has clean slots")


@torch.no_grad()
def sample(
    model,
    latents_shape: Sequence[int],
    reference_latent: torch.Tensor | None = None,
    conditioning: torch.Tensor | None = None,
    reference_conditioning: torch.Tensor | None = None,
    clean_latents: torch.Tensor | None = None,
    clean_mask: torch.Tensor | None = None,
    *,
    steps: int = 50,
    guidance: str = "multiview",
    guidance_scale: float | Sequence[float] | torch.Tensor = 1.0,
    seed: int = 0,
    sampler: str = "joint",
    progress: Callable[[int, int], None] | None = None,
    check: Callable[[], None] | None = None,
    sub_batch: int | None = None,
    scheduler=None,
    device: torch.device | str | None = None,
    init_latents: torch.Tensor | None = None,
    strength: float = 1.0,
    composed_weight: float = 0.5,
    vrs_steps: int = 5,
    preview_factor: int = 2,
    preview_steps: int | None = None,
    refine_strength: float = 0.6,
    attention_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Sample one multi-view latent video set; returns float32 latents ``latents_shape`` on the CPU.

    Args:
        model: an ``MMVDMTransformer`` (or anything with its forward signature).
        latents_shape: (V, T, C, h, w): V views (reference views first), T latent frames.
        reference_latent: (C, h, w) clean latent of the reference image, or None (no reference tokens).
        conditioning: (V, T, Cc, h, w) maps (their ``reference_mask`` channel should equal
            ``clean_mask``), or None (zeros).
        reference_conditioning: (Cc, h, w) or None.
        clean_latents, clean_mask: (V, T, C, h, w) values and (V, T) bool slots given clean
            (:func:`mode_masks`); None = mode 1.
        steps: DDIM steps (100 key views, 50 the others).
        guidance: ``multiview`` | ``conventional`` | ``none``; ``guidance_scale``: one number or one per
            view (:func:`guidance_scales`); scales of 1 skip the unconditional passes.
        seed: seeds the CPU generator of all noise. ``sampler``: ``joint`` | ``composed`` | ``preview``.
        progress: ``progress(done, total)`` after every step; check: called before every step, raises
            to stop (nothing is returned then).
        sub_batch: independent sub-passes (per-view unconditional passes, composed per-view/per-frame
            passes) per model call; None = all in one batch, 1 = sequential (least memory).
        scheduler: a ``CogVideoXDDIMScheduler`` (default :func:`make_scheduler`); device: where the model
            runs (default: the model's).
        init_latents, strength: SDEdit start from ``init_latents`` (V, T, C, h, w) noised to the
            timestep where a fraction ``strength`` of the schedule remains (1 = pure noise).
        composed_weight, vrs_steps: the composed sampler's s and number of rolled-back steps.
        preview_factor, preview_steps, refine_strength: the preview sampler (module docstring).
    """
    if guidance not in GUIDANCE_MODES:
        raise bad_input(f"guidance must be one of {', '.join(GUIDANCE_MODES)}, got {guidance!r}")
    if sampler not in SAMPLERS:
        raise bad_input(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    shape = tuple(int(s) for s in latents_shape)
    _check_shapes(shape, reference_latent, conditioning, reference_conditioning, clean_latents, clean_mask)
    V, T, C, h, w = shape
    mask = torch.zeros(V, T, dtype=torch.bool) if clean_mask is None else clean_mask.detach().to("cpu", torch.bool)
    if bool(mask.all()):
        return clean_latents.detach().float().cpu().clone()
    scheduler = scheduler or make_scheduler()
    dev = torch.device(device) if device is not None else _model_device(model)

    if sampler == "preview":
        return _preview(model, shape, reference_latent, conditioning, reference_conditioning, clean_latents, mask,
                        steps=steps, guidance=guidance, guidance_scale=guidance_scale, seed=seed, progress=progress,
                        check=check, sub_batch=sub_batch, scheduler=scheduler, device=dev,
                        factor=preview_factor, preview_steps=preview_steps, refine_strength=refine_strength,
                        attention_kwargs=attention_kwargs)

    to = lambda z: None if z is None else z.detach().to(dev, torch.float32)  # noqa: E731
    den = _Denoiser(model, to(reference_latent), to(conditioning), to(reference_conditioning), mask, guidance,
                    _as_scales(guidance_scale, V, dev), sub_batch, attention_kwargs, composed_weight)
    ts, alphas = schedule(scheduler, steps)
    gen = torch.Generator("cpu").manual_seed(int(seed))
    x = torch.randn(shape, generator=gen, dtype=torch.float32).to(dev)
    start = 0
    if init_latents is not None:
        if tuple(init_latents.shape) != shape:
            raise bad_input(f"init_latents must be {shape}, got {tuple(init_latents.shape)}")
        start = _start_index(len(ts), strength)
        a = alphas[start]
        x = math.sqrt(a) * to(init_latents) + math.sqrt(1.0 - a) * x
    m = mask.to(dev)[:, :, None, None, None]
    clean = to(clean_latents) if bool(mask.any()) else None
    replace = (lambda z: torch.where(m, clean, z)) if clean is not None else (lambda z: z)  # noqa: E731
    total = len(ts) - start
    composed = sampler == "composed"
    for i in range(start, len(ts)):
        if check is not None:
            check()
        rounds = 2 if (composed and i - start < vrs_steps and i + 1 < len(ts)) else 1
        for r in range(rounds):
            x = replace(x)
            v = den.predict(x, ts[i], composed)
            x_next = _ddim_step(x, v, alphas[i], alphas[i + 1])
            if r + 1 < rounds:
                noise = torch.randn(shape, generator=gen, dtype=torch.float32).to(dev)
                x = _vrs_renoise(x_next, alphas[i], alphas[i + 1], noise)
        x = x_next
        if progress is not None:
            progress(i - start + 1, total)
    return replace(x).float().cpu()


def _preview(model, shape, reference_latent, conditioning, reference_conditioning, clean_latents, mask, *, steps,
             guidance, guidance_scale, seed, progress, check, sub_batch, scheduler, device, factor, preview_steps,
             refine_strength, attention_kwargs):
    V, T, C, h, w = shape
    f = int(factor)
    if f < 1 or h % f or w % f or (h // f) % 2 or (w // f) % 2:
        raise bad_input(f"preview_factor {factor} does not divide the {h}x{w} latents into an even size",
                        "Use a preview factor of 2 with latent sizes divisible by 4 (images divisible by 32).")
    n_prev = int(preview_steps) if preview_steps else max(1, steps // 5)
    refine = float(refine_strength) > 0.0
    n_ref = steps - _start_index(steps, refine_strength) if refine else 0
    total = n_prev + n_ref
    prog = (lambda off: (lambda d, _t: progress(off + d, total))) if progress is not None else (lambda off: None)  # noqa: E731
    low = sample(model, (V, T, C, h // f, w // f), downsample_latents(reference_latent, f),
                 downsample_latents(conditioning, f), downsample_latents(reference_conditioning, f),
                 downsample_latents(clean_latents, f) if bool(mask.any()) else None, mask, steps=n_prev,
                 guidance=guidance, guidance_scale=guidance_scale, seed=seed, sampler="joint", progress=prog(0),
                 check=check, sub_batch=sub_batch, scheduler=scheduler, device=device, attention_kwargs=attention_kwargs)
    up = upsample_latents(low, f)
    if not refine:
        if bool(mask.any()):
            up = torch.where(mask[:, :, None, None, None], clean_latents.detach().float().cpu(), up)
        return up
    return sample(model, shape, reference_latent, conditioning, reference_conditioning, clean_latents, mask,
                  steps=steps, guidance=guidance, guidance_scale=guidance_scale, seed=seed + 1, sampler="joint",
                  progress=prog(n_prev), check=check, sub_batch=sub_batch, scheduler=scheduler, device=device,
                  init_latents=up, strength=refine_strength, attention_kwargs=attention_kwargs)

