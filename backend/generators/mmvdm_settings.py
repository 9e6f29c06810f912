"""The MMVDM generator's settings (:class:`MMVDMSettings`): what changes its result or its memory use,
and the ``vram`` presets that pick the memory switches (:mod:`.mmvdm` explains each switch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..contract.presets import CFG_ANGLE_MODES, CFG_PASSES, DTYPES, GUIDANCE_MODES, OFFLOAD_MODES, SAMPLERS
from ..errors import bad_input
from ..estimates import MMVDM_VRAM


#: ``generator.dtype`` (the contract's :data:`~backend.contract.presets.DTYPES` less "auto") as torch dtypes
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
#: memory presets (``generator.vram``): defaults for the memory-only switches (one definition in
#: :mod:`backend.estimates`, which the add-on reads too); results do not change
VRAM_PRESETS = MMVDM_VRAM


@dataclass
class MMVDMSettings:
    """Everything that changes the MMVDM's result or its memory use (see the module docstring)."""

    seed: int = 0
    steps_key: int = 100
    steps_other: int = 50
    guidance: str = "multiview"
    sampler: str = "joint"
    dtype: str = "auto"
    vae_slicing: bool = True
    vae_tiling: bool = False
    cfg_passes: str = "sequential"
    offload: str = "none"
    device: str | None = None  # None: cuda when available, else cpu
    preview_factor: int = 2
    preview_steps: int | None = None  # None: max(1, steps_other // 5)
    refine_strength: float = 0.6  # preview sampler: 0 = the upsampled preview is the output
    window_frames: int = 49
    context_frames: int = 9
    cfg_angle: str = "reference_image"  # mmvdm/guidance_angle.py: the angle the CFG scale grows with

    def validate(self) -> None:
        for name, choices in (("guidance", GUIDANCE_MODES), ("sampler", SAMPLERS), ("dtype", DTYPES),
                              ("offload", OFFLOAD_MODES), ("cfg_passes", CFG_PASSES), ("cfg_angle", CFG_ANGLE_MODES)):
            value = getattr(self, name)
            if value not in choices:
                raise bad_input(f"generator.{name} must be one of {', '.join(choices)}, got {value!r}")
        if not 0.0 <= float(self.refine_strength) <= 1.0:
            raise bad_input(f"generator.refine_strength must be in [0, 1], got {self.refine_strength!r}")
        if self.preview_factor not in (1, 2, 4):
            raise bad_input(f"generator.preview_factor must be 1, 2 or 4, got {self.preview_factor!r}")

    @classmethod
    def from_spec(cls, spec: Any, **overrides: Any) -> "MMVDMSettings":
        """From a ``protocol.GeneratorSpec``: a ``vram`` preset (:data:`VRAM_PRESETS`) gives the memory
        switches, then every field the spec has and sets (not None) overrides; the rest keep defaults."""
        vram = getattr(spec, "vram", None) or "medium"
        if vram not in VRAM_PRESETS:
            raise bad_input(f"generator.vram must be one of {', '.join(VRAM_PRESETS)}, got {vram!r}")
        kw = dict(VRAM_PRESETS[vram])
        kw.update({f: getattr(spec, f) for f in cls.__dataclass_fields__ if getattr(spec, f, None) is not None})
        kw.update(overrides)
        s = cls(**kw)
        s.validate()
        return s

    def resolved_device(self) -> torch.device:
        if self.device:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def torch_dtype(self, device: torch.device | None = None) -> torch.dtype:
        if self.dtype == "auto":
            dev = device or self.resolved_device()
            return torch.bfloat16 if dev.type == "cuda" else torch.float32
        return _TORCH_DTYPES[self.dtype]
