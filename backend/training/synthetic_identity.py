"""Random identities of the synthetic training data (:mod:`.synthetic`): shape, skin, hair, eyes and lips
as a procedural albedo of the rest surface."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


_EYE = np.array([0.0315, 0.0105, 0.0685])
_MOUTH_Y = -0.059


def _colour(rng: np.random.Generator, kind: str) -> np.ndarray:
    if kind == "skin":
        r = rng.uniform(0.42, 0.97)
        g = r * rng.uniform(0.62, 0.86)
        b = g * rng.uniform(0.68, 0.92)
        return np.array([r, g, b])
    if kind == "hair":
        palettes = [(0.08, 0.06, 0.05), (0.30, 0.18, 0.10), (0.55, 0.38, 0.20), (0.85, 0.72, 0.45),
                    (0.60, 0.22, 0.10), (0.70, 0.70, 0.70), (0.95, 0.95, 0.92)]
        base = np.array(palettes[int(rng.integers(len(palettes)))])
        if rng.random() < 0.15:  # dyed
            base = rng.uniform(0.05, 0.95, 3)
        return np.clip(base + rng.normal(0, 0.04, 3), 0, 1)
    if kind == "iris":
        palettes = [(0.25, 0.15, 0.08), (0.15, 0.35, 0.55), (0.25, 0.45, 0.25), (0.45, 0.45, 0.45)]
        return np.clip(np.array(palettes[int(rng.integers(len(palettes)))]) + rng.normal(0, 0.03, 3), 0, 1)
    return rng.uniform(0, 1, 3)


def random_identity(rng: np.random.Generator, num_shape: int) -> dict[str, Any]:
    """Shape coefficients and texture parameters of one random identity (JSON-serialisable)."""
    skin = _colour(rng, "skin")
    hair = _colour(rng, "hair")
    tex = {
        "skin": skin.tolist(),
        "blotch_freq": rng.uniform(15, 60, (4, 3)).tolist(),
        "blotch_phase": rng.uniform(0, 2 * math.pi, 4).tolist(),
        "blotch_amp": float(rng.uniform(0.02, 0.08)),
        "blush": float(rng.uniform(0.0, 0.15)),
        "lips": np.clip(skin * rng.uniform(0.55, 0.85) + np.array([0.12, 0.0, 0.02]), 0, 1).tolist(),
        "hair": hair.tolist(),
        "hairline": float(rng.uniform(0.03, 0.085)),
        "bald": bool(rng.random() < 0.12),
        "brow": np.clip(hair * rng.uniform(0.5, 0.9), 0, 1).tolist(),
        "brow_thickness": float(rng.uniform(0.003, 0.007)),
        "iris": _colour(rng, "iris").tolist(),
        "beard": bool(rng.random() < 0.2),
        "paint": bool(rng.random() < 0.25),
        "paint_colour": rng.uniform(0, 1, 3).tolist(),
        "paint_dir": (rng.normal(size=3) / 1.0).tolist(),
        "paint_freq": float(rng.uniform(40, 120)),
    }
    shape = np.clip(rng.normal(0, 1, num_shape), -2.5, 2.5)
    return {"shape": shape.tolist(), "texture": tex}


def _smooth(x: torch.Tensor, e0: float, e1: float) -> torch.Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def texture(points: torch.Tensor, tex: dict[str, Any]) -> torch.Tensor:
    """Albedo (..., 3) in [0, 1] at rest-surface points (..., 3) (metres, toy head frame)."""
    p = points.float()
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    col = t(tex["skin"]).expand(*p.shape[:-1], 3).clone()
    freq, phase = t(tex["blotch_freq"]), t(tex["blotch_phase"])
    blotch = sum(torch.sin((p * freq[k]).sum(-1) + phase[k]) for k in range(freq.shape[0])) / freq.shape[0]
    col = col * (1 + tex["blotch_amp"] * blotch[..., None])
    cheek = torch.exp(-(((x.abs() - 0.042) ** 2 + (y + 0.02) ** 2) / (2 * 0.015**2))) * (z > 0.04)
    col = col + tex["blush"] * cheek[..., None] * t([1.0, -0.3, -0.3])
    if tex["paint"]:
        d = t(tex["paint_dir"])
        band = (torch.sin((p * d).sum(-1) * tex["paint_freq"]) > 0.6).float() * (z > 0.0)
        col = torch.lerp(col, t(tex["paint_colour"]).expand_as(col), 0.8 * band[..., None])
    lips = _smooth(-((y - _MOUTH_Y).abs() - 0.009), 0.0, 0.003) * _smooth(-(x.abs() - 0.026), 0, 0.004) * (z > 0.06)
    col = torch.lerp(col, t(tex["lips"]).expand_as(col), lips[..., None])
    brow_y = 0.027 + 0.004 * torch.cos((x.abs() - 0.032) * 60)
    brow = _smooth(-((y - brow_y).abs() - tex["brow_thickness"]), 0, 0.0015) * \
        ((x.abs() > 0.01) & (x.abs() < 0.052) & (z > 0.045)).float()
    col = torch.lerp(col, t(tex["brow"]).expand_as(col), brow[..., None])
    if not tex["bald"]:
        front = y - tex["hairline"] - 0.25 * (z.clamp(min=0) ** 2) * 10
        cap = torch.maximum(_smooth(front, 0.0, 0.006), _smooth(-z - 0.01, 0.0, 0.02) * _smooth(y + 0.06, 0, 0.02))
        sides = _smooth(x.abs() - 0.07, 0, 0.01) * _smooth(y - 0.0, 0, 0.02)
        hair = torch.maximum(cap, sides)
        col = torch.lerp(col, t(tex["hair"]).expand_as(col), hair[..., None])
    if tex["beard"]:
        beard = _smooth(-(y + 0.045), 0, 0.012) * _smooth(y + 0.125, 0, 0.01) * _smooth(z, 0, 0.02) * (1 - lips)
        col = torch.lerp(col, t(tex["hair"]).expand_as(col), 0.85 * beard[..., None].clamp(0, 1))
    for sx in (1.0, -1.0):  # eyes: sclera and iris where the surface is near an eyeball's front
        c = t([sx * _EYE[0], _EYE[1], _EYE[2]])
        r = (p - c).norm(dim=-1)
        on_eye = (r < 0.0125).float()
        lateral = ((p[..., 0] - c[0]) ** 2 + (p[..., 1] - c[1]) ** 2).sqrt()
        front = (p[..., 2] > c[2]).float()
        col = torch.lerp(col, t([0.93, 0.92, 0.9]).expand_as(col), (on_eye * front)[..., None])
        iris = on_eye * front * (lateral < 0.0055).float()
        col = torch.lerp(col, t(tex["iris"]).expand_as(col), iris[..., None])
        pupil = on_eye * front * (lateral < 0.0022).float()
        col = torch.lerp(col, t([0.02, 0.02, 0.02]).expand_as(col), pupil[..., None])
    return col.clamp(0, 1)
