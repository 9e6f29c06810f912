"""Fitting settings and their presets (``tiny``, ``preview``, ``120``, ``360``, like ``protocol.PRESETS``).

A job's ``fit`` object (``job.json``) selects a preset (default: the job's camera preset) and may
override any field, e.g. ``{"preset": "preview", "iterations": 3000, "densify": {"max_gaussians": 30000}}``.
Learning rates are in triangle-local units (positions and scales relative to the parent triangle's
size, GaussianAvatars' convention), so they do not depend on the head's size in metres.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import MVP4DError, bad_input
from ..protocol import MAX_IMAGE_SIDE, MAX_SEED, Rule, check_device, check_rules

_HINT = "Fix that setting in the job's \"fit\" block (job.json) and run again."


@dataclass
class DensifyStrategy:
    """When and how Gaussians grow, shrink and reset (gsplat ``DefaultStrategy``, bound to triangles)."""

    refine_start: int = 500
    refine_stop: int = 15000
    refine_every: int = 100
    reset_every: int = 3000
    grow_grad2d: float = 0.0002  # mean |d loss / d means2d| in half-image units
    grow_scale3d: float = 0.05  # clone below, split above: world scale / head extent
    prune_scale3d: float = 0.5  # prune above (after the first reset): world scale / head extent
    prune_opa: float = 0.005
    max_gaussians: int = 100_000
    split_shrink: float = 1.6  # children's scale = parent's / split_shrink

    def to_json(self) -> dict:
        return asdict(self)


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
    checkpoint_every: int = 500  # 0: never
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1"
    threads: int | None = 1  # torch CPU threads during the fit (None: leave as is). One thread: on
    # busy shared cores two threads made each step up to 18x slower (small ops, measured on 2 cores)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any, default_preset: str = "preview") -> "FitSettings":
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise bad_input("job.json: fit must be a JSON object", _HINT)
        d = dict(d)
        preset = d.pop("preset", default_preset)
        base = preset_settings(preset)
        return base.replace(**d)

    def replace(self, **overrides: Any) -> "FitSettings":
        """These settings with ``overrides`` applied; every value is checked against :data:`FIT_RULES`."""
        kw: dict[str, Any] = {}
        for k, v in overrides.items():
            if k == "densify" and isinstance(v, DensifyStrategy):
                kw[k] = v
            elif k == "densify":
                if not isinstance(v, dict):
                    raise bad_input(f"job.json: fit.densify must be a JSON object (got {v!r:.60})", _HINT)
                kw[k] = dataclasses.replace(self.densify, **check_rules(v, DENSIFY_RULES, "job.json: fit.densify"))
            else:
                kw.update(check_rules({k: v}, FIT_RULES, "job.json: fit"))
        out = dataclasses.replace(self, **kw)
        out.validate()
        return out

    def validate(self) -> None:
        """Every field against its rule, then the rules that join fields."""
        check_rules({f.name: getattr(self, f.name) for f in fields(self) if f.name != "densify"}, FIT_RULES,
                    "job.json: fit")
        check_rules(asdict(self.densify), DENSIFY_RULES, "job.json: fit.densify")

        def bad(name: str, what: str) -> MVP4DError:
            return bad_input(f"job.json: fit.{name} {what}", _HINT)

        if self.unet_resolution % (2**self.unet_depth):
            raise bad("unet_resolution", f"must be divisible by 2**unet_depth = {2 ** self.unet_depth}")

    def structure(self) -> dict[str, Any]:
        """The settings a checkpoint depends on (a resume with different values starts afresh)."""
        return {k: getattr(self, k) for k in ("sh_degree", "unet_resolution", "unet_channels", "unet_depth",
                                              "resolution", "train_frames", "seed")}


def preset_settings(name: Any) -> FitSettings:
    """The preset's settings (a fresh object)."""
    return _PRESETS[Rule(str, choices=tuple(_PRESETS)).check(name, "job.json: fit.preset")]()


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

_LR = Rule(float, 0.0, 10.0, open_lo=True)  # a learning rate: > 0 (the schedules take its log)
_WEIGHT = Rule(float, 0.0, 1e6)  # a loss weight
_EVERY = Rule(int, 1, 10**9)  # an interval in iterations


class _DeviceRule(Rule):
    def check(self, v: Any, where: str) -> Any:
        return check_device(v, where, allow_auto=True)


#: Type and range of every fit setting (one rule per :class:`FitSettings` field; a test keeps them in step).
FIT_RULES: dict[str, Rule] = {
    "preset": Rule(str, choices=tuple(_PRESETS)),
    "iterations": Rule(int, 1, 10**8),
    "resolution": Rule(int, 16, MAX_IMAGE_SIDE, optional=True),
    "train_frames": Rule(str, choices=("all", "even", "first")),
    "seed": Rule(int, 0, MAX_SEED),
    "sh_degree": Rule(int, 0, 3),
    "sh_increase_every": _EVERY,
    "init_opacity": Rule(float, 0.0, 0.999, open_lo=True),  # its logit must be finite
    "init_scale": Rule(float, 0.0, 100.0, open_lo=True),  # its log must be finite
    "init_normal_scale": Rule(float, 0.0, 100.0, open_lo=True),
    "use_sfm": Rule(bool),
    "sfm_max_points": Rule(int, 0, 10**7),
    "sfm_max_distance": Rule(float, 0.0, 100.0, open_lo=True),
    "unet_resolution": Rule(int, 4, 2048),
    "unet_channels": Rule(int, 1, 1024),
    "unet_depth": Rule(int, 1, 8),
    "deform_scale": Rule(float, 0.0, 100.0),
    "lr_position": _LR,
    "lr_position_final": _LR,
    "lr_rotation": _LR,
    "lr_scaling": _LR,
    "lr_opacity": _LR,
    "lr_sh": _LR,
    "lr_unet": _LR,
    "lr_unet_final": _LR,
    "lr_scale": Rule(float, 0.0, 1000.0, open_lo=True),
    "dssim_weight": Rule(float, 0.0, 1.0),  # mixes L1 and D-SSIM
    "lpips_weight": _WEIGHT,
    "laplacian_weight": _WEIGHT,
    "v_rot_weight": _WEIGHT,
    "v_deform_weight": _WEIGHT,
    "scale_weight": _WEIGHT,
    "scale_threshold": Rule(float, 0.0, 1e6, open_lo=True),
    "position_weight": _WEIGHT,
    "position_threshold": Rule(float, 0.0, 1e6, open_lo=True),
    "backface_dropout": Rule(float, 0.0, 1.0),
    "log_every": _EVERY,
    "checkpoint_every": Rule(int, 0, 10**9),  # 0: no checkpoints (benchmarks)
    "device": _DeviceRule(str),
    "threads": Rule(int, 1, 4096, optional=True),
    "densify": Rule(dict),  # checked field by field with DENSIFY_RULES
}

#: Type and range of every densification setting (:class:`DensifyStrategy`).
DENSIFY_RULES: dict[str, Rule] = {
    "refine_start": Rule(int, 0, 10**9),
    "refine_stop": Rule(int, 0, 10**9),
    "refine_every": _EVERY,
    "reset_every": Rule(int, 0, 10**9),  # 0: never
    "grow_grad2d": Rule(float, 0.0, 1e6, open_lo=True),
    "grow_scale3d": Rule(float, 0.0, 1e6, open_lo=True),
    "prune_scale3d": Rule(float, 0.0, 1e6, open_lo=True),
    "prune_opa": Rule(float, 0.0, 1.0),
    "max_gaussians": Rule(int, 1, 10**8),
    "split_shrink": Rule(float, 1.0, 100.0),
}

__all__ = ["FitSettings", "preset_settings", "FIT_PRESETS", "FIT_RULES", "DENSIFY_RULES"]
