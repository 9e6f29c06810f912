"""Sampling the MMVDM: CogVideoX-2B's DDIM schedule, generation modes 1–4, multi-view CFG, and the two
peer samplers (Diffusion²-style score composition, 4DVD-style low-resolution preview).

Scheduler
    :func:`make_scheduler` builds diffusers' ``CogVideoXDDIMScheduler`` with CogVideoX-2B's
    ``scheduler_config.json`` (:data:`SCHEDULER_CONFIG`, checked against
    ``reference/cogvideox_in_diffusers.md`` §4.1): v-prediction, zero terminal SNR, SNR shift 3,
    trailing spacing (100 steps: 999, 989, …, 9; 50: 999, 979, …, 19), scaled-linear betas
    0.00085 → 0.012, no clipping, ᾱ = 1 after the last step. The DDIM update itself is done here in
    float32 with the scheduler's ``alphas_cumprod`` (identical to ``scheduler.step`` when the step count
    divides 1000, correct for any count, and independent of the model's dtype).

Generation modes (paper §3.3, Fig. 3)
    Which latent (view, frame) slots are clean inputs rather than generated — the ``b`` mask channel
    of the conditioning (``reference_mask``). See :func:`mode_masks` for the picture. Clean slots follow
    CAP4D's replacement ``x = z·m + x·(1 − m)`` with the **clean** latent ``z`` (not ``z`` noised to the
    current t): before every model call and after the last step. The MMVDM is trained like an
    image-to-video model — frames flagged by ``b`` are given un-noised, exactly like the reference
    latent — so the clean value is what it was trained to see; the output at clean slots is discarded.

Classifier-free guidance (paper §5, Eq. 2–3)
    ``guided = uncond + s·(cond − uncond)``, applied to v (v → x₀/ε is affine in the same x_t, so this
    equals guidance on ε). The unconditional prediction zeroes *all* conditioning: the reference latent
    (passed as zeros, so its tokens stay), the reference conditioning and every view's conditioning
    maps (including the b mask); the view's own latents (with clean context slots) are kept.

    * ``"multiview"`` (the paper's): one unconditional forward **per generated view**, that view alone
      (its T latent frames), so the unconditional tokens never confuse views. Fully clean views
      (reference views) get none. Passes can be batched or sequential (``sub_batch``).
    * ``"conventional"``: one unconditional forward of the whole multi-view set (ablation, Table 7).
    * ``"none"``: the conditional prediction only.

    Scale per view (:func:`guidance_scale`): **1.1 at 0° → 1.6 at 180°**, linear in the angle between
    the view and its closest *reference view*, clamped to [1.1, 1.6]. This is the paper's rule verbatim
    (§5: "linearly increase the guidance scale with the angular distance to the closest reference view,
    from 1.1 (0 degree deviation) to 1.6 (180 degree deviation)", after Kant et al. 2025); 180° is the
    largest possible angle, so the clamp only guards bad input. Which reference: by default the input
    reference image's camera (the paper's meaning); optionally also the pass's clean reference views
    (:mod:`.guidance_angle`, ``generator.cfg_angle``). The caller computes the angles (it knows the
    cameras) and passes the per-view scales; the same scales are used for ``conventional``.

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

from ..errors import MVP4DError, bad_input

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

#: CogVideoX-2B ``scheduler/scheduler_config.json`` (reference/cogvideox_in_diffusers.md §4.1)
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
GUIDANCE_MODES = ("multiview", "conventional", "none")
SAMPLERS = ("joint", "composed", "preview")
MIN_GUIDANCE, MAX_GUIDANCE, MAX_GUIDANCE_ANGLE = 1.1, 1.6, 180.0


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


# ---------------------------------------------------------------------------------------------
# modes and guidance
# ---------------------------------------------------------------------------------------------


def mode_masks(mode: int, num_views: int, num_latent_frames: int, num_reference_views: int = 0,
               num_context_latent_frames: int = 0) -> torch.Tensor:
    """(V, T) bool mask of clean input slots (True = given clean, ``b`` = 1) for generation ``mode``.

    Views are ordered reference views first (as :attr:`Pass.all_views`); latent frame 0 is the
    window's first. R = ``num_reference_views``, C = ``num_context_latent_frames``. Paper Fig. 3
    (``#`` clean / given, ``.`` generated; rows = views, columns = latent frames)::

        mode 1 (keys, window 0)      mode 2 (cluster, window 0)    mode 3 (keys, extension)    mode 4 (cluster, extension)
        R = 0, C = 0                 R = 4, C = 0                  R = 0, C = 3                R = 4, C = 3
        v1  . . . . . . .            ref1 # # # # # # #            v1  # # # . . . .           ref1 # # # # # # #
        v2  . . . . . . .            ref2 # # # # # # #            v2  # # # . . . .           ref2 # # # # # # #
        v3  . . . . . . .            ref3 # # # # # # #            v3  # # # . . . .           ref3 # # # # # # #
        v4  . . . . . . .            ref4 # # # # # # #            v4  # # # . . . .           ref4 # # # # # # #
        …                            v1   . . . . . . .            …                           v1   # # # . . . .
                                     …                                                         …

    Mode 1 generates everything from the reference image; mode 2 gives R whole views; mode 3 gives the
    first C latent frames of every view (the last 9 output frames generated before); mode 4 both.
    The reference image itself is a separate input, clean in every mode.
    """
    V, T, R, C = int(num_views), int(num_latent_frames), int(num_reference_views), int(num_context_latent_frames)
    if V < 1 or T < 1:
        raise bad_input(f"mode_masks: need at least one view and one latent frame, got {V} x {T}")
    need_r = mode in (2, 4)
    need_c = mode in (3, 4)
    if mode not in (1, 2, 3, 4):
        raise bad_input(f"generation mode must be 1, 2, 3 or 4, got {mode!r}")
    if need_r != (R > 0) or R >= V or R < 0:
        raise bad_input(f"mode {mode} with {R} reference views of {V} views: modes 2 and 4 need 1 <= R < V, "
                        "modes 1 and 3 R = 0")
    if need_c != (C > 0) or C >= T or C < 0:
        raise bad_input(f"mode {mode} with {C} context latent frames of {T}: modes 3 and 4 need 1 <= C < T, "
                        "modes 1 and 2 C = 0")
    m = torch.zeros(V, T, dtype=torch.bool)
    m[:R] = True
    m[:, :C] = True
    return m


def guidance_scale(angle_deg: float, min_scale: float = MIN_GUIDANCE, max_scale: float = MAX_GUIDANCE,
                   max_angle: float = MAX_GUIDANCE_ANGLE) -> float:
    """Multi-view CFG scale for a view ``angle_deg`` away from its closest reference view: linear from
    ``min_scale`` at 0° to ``max_scale`` at ``max_angle`` (paper §5: 1.1 → 1.6 over 0° → 180°), clamped."""
    a = float(angle_deg)
    if not math.isfinite(a):
        raise bad_input(f"guidance angle must be finite, got {angle_deg!r}")
    u = min(max(abs(a) / float(max_angle), 0.0), 1.0)
    return float(min_scale + (max_scale - min_scale) * u)


def guidance_scales(angles: Sequence[float], **kw: float) -> list[float]:
    return [guidance_scale(a, **kw) for a in angles]


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


def _chunks(xs: list[int], size: int | None) -> list[list[int]]:
    if not xs:
        return []
    size = len(xs) if not size or size < 1 else size
    return [xs[i : i + size] for i in range(0, len(xs), size)]


def _model_device(model) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device) and dev.type != "meta":
        return dev
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


class _Denoiser:
    """v predictions of the model for one multi-view set, with CFG and the composed factorisation."""

    def __init__(self, model, reference, conditioning, reference_conditioning, clean_mask, guidance, scales,
                 sub_batch, attention_kwargs, composed_weight):
        self.model = model
        self.ref = reference
        self.cond = conditioning
        self.ref_cond = reference_conditioning
        self.zero_ref = None if reference is None else torch.zeros_like(reference)
        self.mask = clean_mask  # (V, T) bool, CPU
        self.guidance = guidance
        self.scales = scales  # (V,) float32 on device
        self.sub_batch = sub_batch
        self.attention_kwargs = attention_kwargs
        self.s = float(composed_weight)
        V, T = clean_mask.shape
        self.gen_views = [v for v in range(V) if not bool(clean_mask[v].all())]
        self.gen_frames = [t for t in range(T) if not bool(clean_mask[:, t].all())]
        self.use_cfg = guidance != "none" and bool((scales != 1.0).any())

    def _call(self, x, t, ref, cond, ref_cond) -> torch.Tensor:
        """x (B, V, T, C, h, w) float32 -> v (B, V, T, C, h, w) float32."""
        B = x.shape[0]
        ts = torch.full((B,), int(t), dtype=torch.long, device=x.device)
        out = self.model(hidden_states=x, timestep=ts, reference=ref, conditioning=cond,
                         reference_conditioning=ref_cond, attention_kwargs=self.attention_kwargs, return_dict=True)
        return out.sample.float()

    def _ref(self, B, uncond):
        r = self.zero_ref if uncond else self.ref
        if r is None:
            return None, None
        rc = None if (uncond or self.ref_cond is None) else self.ref_cond[None].expand(B, *self.ref_cond.shape)
        return r[None].expand(B, *r.shape), rc

    # -- factorisations -------------------------------------------------------------------------
    def joint(self, x, t, uncond=False):
        ref, rc = self._ref(1, uncond)
        cond = None if (uncond or self.cond is None) else self.cond[None]
        return self._call(x[None], t, ref, cond, rc)[0]

    def per_view(self, x, t, uncond=False, out=None):
        """Each generated view alone (all its frames): (V, T, ...) with rows of fully clean views = out/0."""
        out = torch.zeros_like(x) if out is None else out
        for ch in _chunks(self.gen_views, self.sub_batch):
            ref, rc = self._ref(len(ch), uncond)
            cond = None if (uncond or self.cond is None) else self.cond[ch][:, None]
            out[ch] = self._call(x[ch][:, None], t, ref, cond, rc)[:, 0]
        return out

    def per_frame(self, x, t, uncond=False):
        """All views at one latent frame each (T = 1 per forward)."""
        out = torch.zeros_like(x)
        for ch in _chunks(self.gen_frames, self.sub_batch):
            ref, rc = self._ref(len(ch), uncond)
            xb = x[:, ch].transpose(0, 1)[:, :, None]  # (B, V, 1, C, h, w)
            cond = None if (uncond or self.cond is None) else self.cond[:, ch].transpose(0, 1)[:, :, None]
            out[:, ch] = self._call(xb, t, ref, cond, rc)[:, :, 0].transpose(0, 1)
        return out

    def composed(self, x, t, uncond=False):
        return self.s * self.per_view(x, t, uncond) + (1.0 - self.s) * self.per_frame(x, t, uncond)

    # -- guided prediction ----------------------------------------------------------------------
    def predict(self, x, t, composed: bool):
        vc = self.composed(x, t) if composed else self.joint(x, t)
        if not self.use_cfg:
            return vc
        if self.guidance == "multiview":
            vu = self.per_view(x, t, uncond=True, out=vc.clone())
        elif composed:
            vu = self.composed(x, t, uncond=True)
        else:
            vu = self.joint(x, t, uncond=True)
        s = self.scales.view(-1, 1, 1, 1, 1)
        return vu + s * (vc - vu)


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


def _as_scales(guidance_scale, V: int, device) -> torch.Tensor:
    s = torch.as_tensor(guidance_scale, dtype=torch.float32)
    if s.ndim == 0:
        s = s.expand(V)
    if s.shape != (V,) or not torch.isfinite(s).all():
        raise bad_input(f"guidance_scale must be a number or one finite value per view ({V}), got {tuple(s.shape)}")
    return s.to(device)


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
