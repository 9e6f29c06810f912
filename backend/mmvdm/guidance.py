"""Generation modes (which latent slots are clean inputs) and multi-view classifier-free guidance.

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import bad_input


MIN_GUIDANCE, MAX_GUIDANCE, MAX_GUIDANCE_ANGLE = 1.1, 1.6, 180.0


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


def _as_scales(guidance_scale, V: int, device) -> torch.Tensor:
    s = torch.as_tensor(guidance_scale, dtype=torch.float32)
    if s.ndim == 0:
        s = s.expand(V)
    if s.shape != (V,) or not torch.isfinite(s).all():
        raise bad_input(f"guidance_scale must be a number or one finite value per view ({V}), got {tuple(s.shape)}")
    return s.to(device)
