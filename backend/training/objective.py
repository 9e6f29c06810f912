"""From training items to the MMVDM's inputs, and the v-prediction loss (paper §3, §5; CogVideoX-2B's
diffusion: v-prediction, zero terminal SNR, SNR shift 3).

Per sample (:func:`prepare_sample`, CPU, data-loader workers): images to [-1, 1], the clean-slot mask of
its generation mode (:func:`backend.mmvdm.sampler.mode_masks`: mode 2/4 give the first ⌊V/2⌋ views, mode
3/4 the first 3 latent frames), the conditioning maps of every view (:func:`video_conditioning`, its
``reference_mask`` channel = that mask) and of the reference image (:func:`reference_conditioning` with
the out-crop mask). With conditioning dropout all maps are zeros (and :func:`encode_batch` zeroes the
reference latent) — what the sampler's unconditional pass feeds the model.

Per batch on the device (:func:`encode_batch`): the frozen VAE encodes every view's video and the
reference image separately (posterior mode, deterministic), so latents are (B, V, T, C, h, w).

Loss (:func:`diffusion_loss`): t ~ U{0, …, 999}, ε ~ N(0, I), ᾱ from the sampler's own scheduler
(``make_scheduler().alphas_cumprod``: scaled-linear betas rescaled to zero terminal SNR, then SNR-shifted
by 3), x_t = √ᾱ·z + √(1 − ᾱ)·ε; clean slots are replaced by their clean latent (as the sampler does);
target v = √ᾱ·ε − √(1 − ᾱ)·z; loss = mean squared error over the *generated* slots only (per sample,
then averaged over the batch). This equals CogVideoX's x₀ loss weighted by 1 / (1 − ᾱ).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..conditioning.maps import NUM_CHANNELS, head_geometry, reference_conditioning, video_conditioning
from ..conditioning.per_frame import video_conditioning_per_frame
from ..flame import Flame
from ..mmvdm.guidance import mode_masks
from .curriculum import SampleMode, latent_frames
from .data import TrainingItem

__all__ = ["prepare_sample", "collate", "encode_batch", "diffusion_loss", "NUM_TRAIN_TIMESTEPS"]

NUM_TRAIN_TIMESTEPS = 1000


def _unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div(127.5).sub(1.0).movedim(-1, -3)


@torch.no_grad()
def prepare_sample(flame: Flame, item: TrainingItem, mode: SampleMode, latent_downsample: int = 8) -> dict[str, Any]:
    """CPU tensors of one sample (see the module docstring)."""
    V, F = item.num_views, item.num_frames
    T = latent_frames(F)
    mask = mode_masks(mode.mode, V, T, mode.reference_views, mode.context_latent_frames)
    h = item.images.shape[2] // latent_downsample
    w = item.images.shape[3] // latent_downsample
    if mode.dropout:
        cond = torch.zeros(V, T, NUM_CHANNELS, h, w)
        ref_cond = torch.zeros(NUM_CHANNELS, h, w)
    else:
        geo = head_geometry(flame, item.params)
        cond = torch.stack([  # per-frame crop cameras (training reader) or one camera per view
            (video_conditioning(flame, item.params, cam, item.reference_camera,
                                reference_frames=[k for k in range(T) if bool(mask[i, k])],
                                latent_downsample=latent_downsample, geometry=geo) if item.frame_cameras is None else
             video_conditioning_per_frame(flame, item.params, item.view_cameras(i), item.reference_camera,
                                          reference_frames=[k for k in range(T) if bool(mask[i, k])],
                                          latent_downsample=latent_downsample, geometry=geo)).cpu()
            for i, cam in enumerate(item.cameras)])
        ref_cond = reference_conditioning(flame, item.reference_params, item.reference_camera, item.reference_outcrop,
                                          latent_downsample=latent_downsample).cpu()
    return {
        "images": _unit(item.images),  # (V, F, 3, D, D)
        "reference": _unit(item.reference_image),  # (3, D, D)
        "conditioning": cond.float(),
        "reference_conditioning": ref_cond.float(),
        "clean_mask": mask,
        "drop": torch.tensor(bool(mode.dropout)),
        "meta": {"sequence": item.sequence, "dataset": item.dataset, "views": item.views, "frames": item.frames,
                 "reference": [item.reference_view, item.reference_frame], "mode": mode.mode},
    }


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "meta"}
    out["meta"] = [s["meta"] for s in samples]
    return out


@torch.no_grad()
def encode_batch(vae, batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V, T, C, h, w) view latents and (B, C, h, w) reference latents (zeros where dropped), float32."""
    images = batch["images"]
    B, V = images.shape[:2]
    z = vae.encode_views(images.reshape(B * V, *images.shape[2:]).to(device))
    z = z.reshape(B, V, *z.shape[1:]).float()
    ref = vae.encode_reference(batch["reference"].to(device)).float()
    drop = batch["drop"].to(device)
    ref = torch.where(drop[:, None, None, None], torch.zeros_like(ref), ref)
    return z, ref


def diffusion_loss(model, latents: torch.Tensor, reference: torch.Tensor, conditioning: torch.Tensor,
                   reference_conditioning: torch.Tensor, clean_mask: torch.Tensor, timesteps: torch.Tensor,
                   noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, per-sample losses): MSE of the v prediction over generated slots (module docstring)."""
    B = latents.shape[0]
    a = alphas_cumprod.to(latents.device, torch.float32)[timesteps].view(B, 1, 1, 1, 1, 1)
    sa, so = a.sqrt(), (1.0 - a).clamp(min=0).sqrt()
    x_t = sa * latents + so * noise
    m = clean_mask.to(latents.device)[:, :, :, None, None, None]
    x_in = torch.where(m, latents, x_t)
    target = sa * noise - so * latents
    pred = model(hidden_states=x_in, timestep=timesteps, reference=reference, conditioning=conditioning,
                 reference_conditioning=reference_conditioning, return_dict=True).sample
    err = (pred.float() - target) ** 2
    gen = (~m).float()
    per_elem = err.shape[3] * err.shape[4] * err.shape[5]
    count = gen.flatten(1).sum(1) * per_elem
    per_sample = (err * gen).flatten(1).sum(1) / count.clamp(min=1)
    return per_sample.mean(), per_sample.detach()
