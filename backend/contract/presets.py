"""Quality presets (views, frames, resolution), their camera ring layouts, and each setting's choices.

The add-on shows these; ``backend/cameras/rings.py`` builds the rings.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QualityPreset:
    name: str
    num_key_views: int
    num_other_views: int
    num_frames: int  # output frames per view, always 1 + 4k (CogVideoX temporal compression)
    resolution: int  # square images, pixels
    description: str

    @property
    def num_views(self) -> int:
        return self.num_key_views + self.num_other_views


PRESETS: dict[str, QualityPreset] = {
    p.name: p
    for p in (
        QualityPreset("tiny", 2, 4, 5, 64, "CPU smoke test: 6 views x 5 frames at 64 px"),
        QualityPreset("preview", 4, 8, 17, 128, "quick look on CPU: 12 views x 17 frames at 128 px"),
        QualityPreset("120", 8, 24, 89, 512, "paper's 120-degree avatar: 32 views x 89 frames at 512 px"),
        QualityPreset("360", 8, 40, 89, 512, "paper's 360-degree avatar: 48 views x 89 frames at 512 px"),
    )
}

#: Preset rings are framed like the paper's face crop (S2.1): the head spans 1 / CROP_SCALE of the image.
CROP_SCALE = 1.25


def _grid(azimuths: list[float], elevations: list[float]) -> list[tuple[float, float]]:
    return [(float(a), float(e)) for e in elevations for a in azimuths]


def _wrap(a: float) -> float:
    return a - 360.0 if a > 180.0 else a


#: Camera ring layouts per preset: (key views, other views) as (azimuth, elevation) in degrees relative
#: to the head's forward direction (paper S2.3, Fig. S10; backend/cameras/rings.py explains the choices).
#: Part of the contract because the add-on builds the same rings as Blender cameras.
RING_LAYOUTS: dict[str, tuple[list[tuple[float, float]], list[tuple[float, float]]]] = {
    "tiny": ([(-20.0, 5.0), (20.0, 5.0)], [(-35.0, 0.0), (0.0, -10.0), (0.0, 20.0), (35.0, 0.0)]),
    "preview": (_grid([-25, 25], [-2, 18]), _grid([-45, -15, 15, 45], [-10, 25])),
    "120": (_grid([-45, -15, 15, 45], [-5, 20]), _grid([-60, -36, -12, 12, 36, 60], [-15, 0, 15, 30])),
    "360": (  # elevation -30..+90 (paper S2.3): 7 keys around the head and the crown, uniform over the range
        _grid([_wrap(360 / 7 * k) for k in range(7)], [5]) + [(0.0, 90.0)],
        _grid([_wrap(18 + 36 * k) for k in range(10)], [-30])
        + _grid([_wrap(15 + 30 * k) for k in range(12)], [0])
        + _grid([_wrap(36 * k) for k in range(10)], [30])
        + _grid([_wrap(22.5 + 45 * k) for k in range(8)], [60]),
    ),
}

GENERATORS = ("projection", "mmvdm", "cap4d")
#: CAP4D image-budget presets (``generator.quality``): (generated images, DDIM steps, generation resolution);
#: upstream's low/medium/high (210 × 50, 420 × 50, 840 × 100 at 512 px) and a CPU smoke test.
CAP4D_QUALITY: dict[str, tuple[int, int, int]] = {
    "tiny": (12, 2, 64), "low": (210, 50, 512), "medium": (420, 50, 512), "high": (840, 100, 512),
}
#: ``generator.quality`` when unset: from the camera preset
CAP4D_QUALITY_FOR_PRESET = {"tiny": "tiny", "preview": "low", "120": "medium", "360": "high"}
CAP4D_LICENCE = ("CAP4D's MMDM weights are CC BY-NC 4.0 and derived from Stable Diffusion 2.1 "
                 "(CreativeML OpenRAIL++-M use restrictions apply): not for commercial use.")


GUIDANCE_MODES = ("multiview", "conventional", "none")
SAMPLERS = ("joint", "composed", "preview")  # joint pass (paper), Diffusion²-style composed, 4DVD-style preview
DTYPES = ("auto", "bf16", "fp16", "fp32")
VRAM_PRESETS = ("high", "medium", "low", "lowest")
OFFLOAD_MODES = ("none", "model", "sequential")
CFG_PASSES = ("sequential", "batched")
CFG_ANGLE_MODES = ("reference_image", "closest_reference")  # backend/mmvdm/guidance_angle.py
CORPUS_FORMATS = ("png",)
DEFAULT_FPS = 24.0
BUILTIN_ANIMATIONS = ("default", "neutral")  # animation.source "builtin:<name>" (backend/animation.py)
