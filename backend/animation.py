"""Driving sequences: the per-frame FLAME parameters that animate the avatar.

A job's animation is either a built-in sequence (``builtin:default``: neutral → smile → jaw open →
blink → neutral, so the avatar visibly moves) or an ``.npz`` of FLAME parameters
(:data:`backend.protocol.ANIMATION_KEYS`). Either way the result is a :class:`FlameParams` of exactly
the job's frame count with the tracked identity (shape) filled in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .errors import bad_input
from .flame.lbs import FlameParams
from .flame.model import FlameModel
from .protocol import BUILTIN_ANIMATIONS


# Keyframes of the default sequence at normalised time: (t, smile, jaw_open, blink).
_DEFAULT_KEYS = np.array(
    [
        [0.00, 0.0, 0.0, 0.0],
        [0.12, 0.0, 0.0, 0.0],
        [0.30, 1.0, 0.0, 0.0],
        [0.45, 0.0, 0.0, 0.0],
        [0.60, 0.0, 1.0, 0.0],
        [0.75, 0.0, 0.0, 0.0],
        [0.82, 0.0, 0.0, 1.0],
        [0.89, 0.0, 0.0, 0.0],
        [1.00, 0.0, 0.0, 0.0],
    ]
)
JAW_OPEN_RAD = 0.3  # jaw rotation about +x at full "jaw open" (positive x opens the mouth)


def _ease_curves(num_frames: int) -> np.ndarray:
    """(T, 3) smile / jaw / blink weights: cosine ease between the keyframes."""
    t = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    kt = _DEFAULT_KEYS[:, 0]
    idx = np.clip(np.searchsorted(kt, t, side="right") - 1, 0, len(kt) - 2)
    a = (t - kt[idx]) / (kt[idx + 1] - kt[idx])
    w = 0.5 - 0.5 * np.cos(np.pi * np.clip(a, 0.0, 1.0))
    return (1 - w)[:, None] * _DEFAULT_KEYS[idx, 1:] + w[:, None] * _DEFAULT_KEYS[idx + 1, 1:]


def builtin_animation(
    name: str, model: FlameModel, num_frames: int, shape: torch.Tensor | None = None,
    warn: Callable[[str], None] | None = None,
) -> FlameParams:
    """A built-in sequence for ``model``. Uses named expression components where the model has them
    (the toy head does); real FLAME has no names, so it opens the jaw with the jaw joint and says so."""
    if name not in BUILTIN_ANIMATIONS:
        raise bad_input(f"unknown built-in animation {name!r}", f"Use one of {', '.join(BUILTIN_ANIMATIONS)}.")
    params = FlameParams.zeros(model, num_frames)
    if shape is not None:
        params.shape = shape.detach().clone().to(params.shape)
    if name == "neutral":
        return params
    curves = torch.from_numpy(_ease_curves(num_frames)).to(params.expr)
    names = list(model.expression_names or [])
    missing = []
    for col, comp in ((0, "smile"), (2, "blink_left"), (2, "blink_right")):
        if comp in names:
            params.expr[:, names.index(comp)] = curves[:, col]
        else:
            missing.append(comp)
    params.jaw_pose[:, 0] = JAW_OPEN_RAD * curves[:, 1]
    if missing and warn is not None:
        warn(f"the FLAME model has no named {', '.join(sorted(set(missing)))} components; "
             "the default animation only opens the jaw (pass --animation for a full sequence)")
    return params


def load_animation(
    path: str | Path, model: FlameModel, num_frames: int, shape: torch.Tensor | None = None,
    warn: Callable[[str], None] | None = None,
) -> FlameParams:
    """Read an animation ``.npz``; hold the last frame or cut so it has exactly ``num_frames``."""
    params = FlameParams.load_npz(path, model.num_shape, model.num_expr)
    if shape is not None:
        params.shape = shape.detach().clone().to(params.shape)
    n = params.num_frames
    if n == 0:
        raise bad_input(f"animation {Path(path).name} has no frames", "Export at least one frame.")
    if n != num_frames:
        if warn is not None:
            how = "holding its last frame" if n < num_frames else "using its first frames"
            warn(f"animation has {n} frames, the job needs {num_frames}: {how}")
        idx = torch.clamp(torch.arange(num_frames), max=n - 1)
        params = FlameParams(**{k: (v if k == "shape" else v[idx]) for k, v in vars(params).items()})
    return params


def job_animation(
    source: str, job_dir: Path, model: FlameModel, num_frames: int, shape: torch.Tensor,
    warn: Callable[[str], None] | None = None,
) -> FlameParams:
    if source.startswith("builtin:"):
        return builtin_animation(source.split(":", 1)[1], model, num_frames, shape, warn)
    return load_animation(job_dir / source, model, num_frames, shape, warn)

