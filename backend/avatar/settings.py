"""Fitting settings and their presets (``tiny``, ``preview``, ``120``, ``360``, like ``protocol.PRESETS``).

A job's ``fit`` object (``job.json``) selects a preset (default: the job's camera preset) and may
override any field, e.g. ``{"preset": "preview", "iterations": 3000, "densify": {"max_gaussians": 30000}}``.
Learning rates are in triangle-local units (positions and scales relative to the parent triangle's
size, GaussianAvatars' convention), so they do not depend on the head's size in metres.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import MVP4DError
from .densify import DensifyStrategy


@dataclass
class FitSettings:
    preset: str = "preview"
    iterations: int = 1500
    resolution: int | None = None  # fit at this image size (None: the corpus's)
    train_frames: str = "all"  # "all", "even" (odd frames held out) or "first" (frame 0 only)
    seed: int = 0
    # representation
    sh_degree: int = 0  # final SH degree
    sh_increase_every: int = 1000  # +1 degree every this many iterations (CAP4D)
    init_opacity: float = 0.9
    init_scale: float = 0.35  # in-plane std-dev of a triangle's Gaussian, triangle-size units
    init_normal_scale: float = 0.1  # std-dev along the triangle normal, triangle-size units
    use_sfm: bool = True
    sfm_max_points: int = 2000
    sfm_max_distance: float = 0.25  # drop triangulated points farther than this x head extent from the mesh
    # U-Net (chart-space deformation)
    unet_resolution: int = 64
    unet_channels: int = 16
    unet_depth: int = 4
    deform_scale: float = 1.0  # one unit of U-Net output = this many triangle sizes
    # learning rates (Adam, eps 1e-15)
    lr_position: float = 5e-3
    lr_position_final: float = 5e-5
    lr_rotation: float = 2e-3
    lr_scaling: float = 1e-2
    lr_opacity: float = 5e-2
    lr_sh: float = 1e-2
    lr_unet: float = 1e-4
    lr_unet_final: float = 1e-5
    lr_scale: float = 1.0  # multiplies every learning rate (a knob for diverging fits)
    # losses (paper S2.4 / GaussianAvatars / CAP4D)
    dssim_weight: float = 0.2
    lpips_weight: float = 0.0  # used only when LPIPS weights exist locally
    laplacian_weight: float = 1.0
    v_rot_weight: float = 0.005
    v_deform_weight: float = 0.4
    scale_weight: float = 1.0
    scale_threshold: float = 0.6
    position_weight: float = 1e-2
    position_threshold: float = 1.0
    backface_dropout: float = 0.2
    densify: DensifyStrategy = field(default_factory=DensifyStrategy)
    # bookkeeping
    log_every: int = 50
    checkpoint_every: int = 500
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1"
    threads: int | None = 1  # torch CPU threads during the fit (None: leave as is). One thread: on
    # busy shared cores two threads made each step up to 18x slower (small ops, measured on 2 cores)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any] | None, default_preset: str = "preview") -> "FitSettings":
        d = dict(d or {})
        preset = d.pop("preset", default_preset)
        base = preset_settings(preset)
        return base.replace(**d)

    def replace(self, **overrides: Any) -> "FitSettings":
        names = {f.name: f for f in fields(self)}
        kw: dict[str, Any] = {}
        for k, v in overrides.items():
            if k not in names:
                raise MVP4DError("BAD_INPUT", f"job.json: fit.{k} is not a known fit setting",
                                 f"Known settings: {', '.join(sorted(names))}.")
            if k == "densify":
                if isinstance(v, DensifyStrategy):
                    kw[k] = v
                    continue
                if not isinstance(v, dict):
                    raise MVP4DError("BAD_INPUT", "job.json: fit.densify must be a JSON object")
                dnames = {f.name for f in fields(DensifyStrategy)}
                bad = sorted(set(v) - dnames)
                if bad:
                    raise MVP4DError("BAD_INPUT", f"job.json: fit.densify.{bad[0]} is not a known setting")
                kw[k] = dataclasses.replace(self.densify, **v)
            else:
                kw[k] = _typed(k, v, getattr(self, k))
        out = dataclasses.replace(self, **kw)
        out.validate()
        return out

    def validate(self) -> None:
        def bad(name: str, what: str) -> MVP4DError:
            return MVP4DError("BAD_INPUT", f"job.json: fit.{name} {what}")

        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise bad("iterations", "must be a positive integer")
        if self.train_frames not in ("all", "even", "first"):
            raise bad("train_frames", "must be 'all', 'even' or 'first'")
        if self.unet_resolution % (2**self.unet_depth):
            raise bad("unet_resolution", f"must be divisible by 2**unet_depth = {2 ** self.unet_depth}")
        if not 0 <= self.sh_degree <= 3:
            raise bad("sh_degree", "must be 0..3")
        if not 0.0 <= self.backface_dropout <= 1.0:
            raise bad("backface_dropout", "must be in [0, 1]")
        if self.resolution is not None and (not isinstance(self.resolution, int) or self.resolution < 16):
            raise bad("resolution", "must be an integer >= 16")

    def structure(self) -> dict[str, Any]:
        """The settings a checkpoint depends on (a resume with different values starts afresh)."""
        return {k: getattr(self, k) for k in ("sh_degree", "unet_resolution", "unet_channels", "unet_depth",
                                              "resolution", "train_frames", "seed")}


def _typed(name: str, value: Any, default: Any) -> Any:
    """``value`` checked against the type of the field's current value (ints pass as floats)."""
    def bad(what: str) -> MVP4DError:
        return MVP4DError("BAD_INPUT", f"job.json: fit.{name} must be {what} (got {value!r})")

    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("a number")
        return float(value)
    elif isinstance(default, str) and not isinstance(value, str):
        raise bad("a string")
    return value


def preset_settings(name: str) -> FitSettings:
    """The preset's settings (a fresh object)."""
    if name not in _PRESETS:
        raise MVP4DError("BAD_INPUT", f"job.json: fit.preset must be one of {', '.join(_PRESETS)} (got {name!r})")
    return _PRESETS[name]()


_PRESETS = {
    # CPU smoke test: 6 views x 5 frames at 64 px, under 30 s on 2 busy cores (held-out PSNR ~26 dB)
    "tiny": lambda: FitSettings(
        preset="tiny", iterations=240, unet_resolution=32, unet_channels=8, unet_depth=3, lr_unet=2e-4,
        sfm_max_points=500, log_every=20, checkpoint_every=100,
        densify=DensifyStrategy(refine_start=100, refine_stop=200, refine_every=50, reset_every=0,
                                max_gaussians=12_000),
    ),
    # quick look on CPU: 12 views x 17 frames at 128 px, about 3 minutes on 2 busy cores (held-out PSNR
    # ~30 dB; it plateaus after ~500 iterations)
    "preview": lambda: FitSettings(
        preset="preview", iterations=800, unet_resolution=64, unet_channels=16, unet_depth=4,
        log_every=50, checkpoint_every=200,
        densify=DensifyStrategy(refine_start=200, refine_stop=600, refine_every=100, reset_every=0,
                                max_gaussians=15_000),
    ),
    # the paper's avatars on a GPU (CAP4D-like schedules, shortened: gsplat on CUDA)
    "120": lambda: FitSettings(
        preset="120", iterations=30_000, threads=None, sh_degree=3, sh_increase_every=1000, unet_resolution=128,
        unet_channels=32, unet_depth=5, lr_unet=1e-4, lr_unet_final=1e-6, log_every=100, checkpoint_every=1000,
        densify=DensifyStrategy(refine_start=1000, refine_stop=20_000, refine_every=100, reset_every=5000,
                                max_gaussians=300_000),
    ),
    "360": lambda: FitSettings(
        preset="360", iterations=40_000, threads=None, sh_degree=3, sh_increase_every=1000, unet_resolution=128,
        unet_channels=32, unet_depth=5, lr_unet=1e-4, lr_unet_final=1e-6, log_every=100, checkpoint_every=1000,
        densify=DensifyStrategy(refine_start=1000, refine_stop=25_000, refine_every=100, reset_every=5000,
                                max_gaussians=400_000),
    ),
}

FIT_PRESETS = tuple(_PRESETS)

__all__ = ["FitSettings", "preset_settings", "FIT_PRESETS"]
