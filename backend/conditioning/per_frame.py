"""Conditioning of a view whose crop camera changes from frame to frame (per-frame training crops, S2.1).

The training reader crops every frame around the projected head (smoothed boxes), so each frame of a
view has its own crop camera (same pose, different intrinsics). :func:`video_conditioning_per_frame`
conditions latent frame k on the camera of the output frame it keeps (0 or 4k) by running
:func:`~backend.conditioning.maps.video_conditioning` on that frame's group — output frames 4k−4 … 4k,
so the sub-frame motion maps are the screen-space displacements in the kept frame's crop — and keeping
its last latent frame. With the same camera in every frame it equals ``video_conditioning`` exactly.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Sequence

import torch

from ..cameras import Camera
from ..errors import MVP4DError
from ..flame import Flame, FlameParams
from .maps import LATENT_DOWNSAMPLE, HeadGeometry, head_geometry, latent_frame_indices, video_conditioning

__all__ = ["video_conditioning_per_frame"]


def _frames(p: FlameParams, start: int, stop: int) -> FlameParams:
    return FlameParams(**{f.name: getattr(p, f.name) if f.name == "shape" else getattr(p, f.name)[start:stop]
                          for f in fields(p)})


def video_conditioning_per_frame(
    flame: Flame,
    params: FlameParams,
    cameras: Sequence[Camera],
    ref_camera: Camera,
    reference_frames: Sequence[int] = (),
    latent_downsample: int = LATENT_DOWNSAMPLE,
    *,
    geometry: HeadGeometry | None = None,
) -> torch.Tensor:
    """``(1 + F~, NUM_CHANNELS, h, w)`` like ``video_conditioning`` with one camera per output frame."""
    keep = latent_frame_indices(params.num_frames)
    if len(cameras) != params.num_frames:
        raise MVP4DError("BAD_INPUT", f"{len(cameras)} cameras for {params.num_frames} frames")
    geo = geometry if geometry is not None else head_geometry(flame, params)
    refs = {int(k) for k in reference_frames}
    if any(not 0 <= k < len(keep) for k in refs):
        raise MVP4DError("BAD_INPUT", f"reference_frames {sorted(refs)} out of range for {len(keep)} latent frames")
    out = []
    for k, f in enumerate(keep):
        lo = 0 if k == 0 else f - 4
        g = HeadGeometry(geo.vertices[lo:f + 1], geo.offsets[lo:f + 1])
        last = 0 if k == 0 else 1
        c = video_conditioning(flame, _frames(params, lo, f + 1), cameras[f], ref_camera,
                               reference_frames=[last] if k in refs else [], latent_downsample=latent_downsample,
                               geometry=g)
        out.append(c[last])
    return torch.stack(out)
