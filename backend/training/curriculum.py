"""The multi-modal training curriculum (paper §3.3, Table 3, §5, S3.3) as data.

A :class:`Curriculum` is a list of :class:`Stage` s, each with its iterations, learning rate, batch size,
allowed generation modes and resolutions V × F × D (views × output frames × pixels). The paper's Table 3
is ``configs/paper.json`` (:func:`load_curriculum("paper")`); ``configs/small.json`` is the CPU-sized
version the CFG-ablation experiment uses (same structure, 64 px, fewer frames and iterations).

Sampling (:meth:`Curriculum.draw`, one call per micro-batch; every number comes from the given
``numpy.random.Generator``, so a step is a pure function of its seed):

* **resolution**: one of the stage's resolutions with equal probability (all samples of a micro-batch
  share it — the model needs one token layout per batch);
* **generation mode**, per sample: in a stage whose ``modes`` include 2–4, mode 2 applies with
  probability ``mode2_probability`` (25 %) when the resolution has several views — the first half of the
  views (⌊V/2⌋) are given clean — and mode 3 with probability ``mode3_probability`` (25 %) when it has
  more than ``context_latent_frames`` (3) latent frames — the first three latent frames are given clean;
  both → mode 4, neither → mode 1. A stage with ``modes: [1]`` uses mode 1 only (stage 1 of the paper).
  So with V > 1 and T > 3: P(1) = 9/16, P(2) = P(3) = 3/16, P(4) = 1/16 (:meth:`mode_probabilities`);
* **conditioning dropout**, per sample, with probability ``conditioning_dropout`` (10 %, §5): every
  conditioning signal is zeroed — reference latent, reference maps and all view maps (b mask included),
  exactly what the sampler's unconditional pass sees; the clean slots of modes 2–4 stay clean.

Learning rate: the stage's, with an optional linear warm-up over the stage's first ``warmup_steps``
steps (constant afterwards, as the paper gives one rate per stage).

Config format (JSON)::

    {"name": "...", "conditioning_dropout": 0.1, "mode2_probability": 0.25, "mode3_probability": 0.25,
     "context_latent_frames": 3,
     "stages": [{"name": "stage1", "iterations": 30000, "learning_rate": 1e-4, "batch_size": 64,
                 "warmup_steps": 0, "modes": [1], "resolutions": ["1x49x256", "2x29x256", ...]}, ...]}

Resolutions are ``"VxFxD"`` strings or ``[V, F, D]`` lists; F must be 1 + 4k (CogVideoX's temporal
compression) and D a multiple of 16 (8× VAE, 2× patches).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import bad_input

__all__ = ["Resolution", "Stage", "Curriculum", "SampleMode", "BatchDraw", "load_curriculum", "CONFIG_DIR",
           "latent_frames"]

CONFIG_DIR = Path(__file__).with_name("configs")
TEMPORAL_COMPRESSION = 4


_HINT = "Fix the curriculum config (format in backend/training/curriculum.py)."


def latent_frames(frames: int) -> int:
    return 1 + (int(frames) - 1) // TEMPORAL_COMPRESSION


@dataclass(frozen=True)
class Resolution:
    """V views × F output frames × D × D pixels."""

    views: int
    frames: int
    size: int

    @property
    def latent_frames(self) -> int:
        return latent_frames(self.frames)

    def __str__(self) -> str:
        return f"{self.views}x{self.frames}x{self.size}"

    @classmethod
    def parse(cls, value: Any, where: str = "resolution") -> "Resolution":
        if isinstance(value, Resolution):
            return value
        try:
            if isinstance(value, str):
                v, f, d = (int(x) for x in value.lower().replace("×", "x").split("x"))
            elif isinstance(value, Mapping):
                v, f, d = int(value["views"]), int(value["frames"]), int(value["size"])
            else:
                v, f, d = (int(x) for x in value)
        except (ValueError, TypeError, KeyError) as exc:
            raise bad_input(f"{where}: {value!r} is not 'VxFxD' or [V, F, D]", _HINT, where="curriculum:") from exc
        r = cls(v, f, d)
        if v < 1 or f < 1 or (f - 1) % TEMPORAL_COMPRESSION:
            raise bad_input(f"{where}: {r} needs V >= 1 and F = 1 + 4k frames", _HINT, where="curriculum:")
        if d < 16 or d % 16:
            raise bad_input(f"{where}: {r} needs D a multiple of 16 (8x VAE, 2x2 patches)", _HINT, where="curriculum:")
        return r


@dataclass
class Stage:
    name: str
    iterations: int
    learning_rate: float
    resolutions: list[Resolution]
    modes: tuple[int, ...] = (1,)
    batch_size: int = 64
    warmup_steps: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "iterations": self.iterations, "learning_rate": self.learning_rate,
                "batch_size": self.batch_size, "warmup_steps": self.warmup_steps, "modes": list(self.modes),
                "resolutions": [str(r) for r in self.resolutions]}


@dataclass(frozen=True)
class SampleMode:
    """Generation mode of one sample: ``reference_views`` whole views and ``context_latent_frames`` first
    latent frames given clean (mode 1: 0/0, mode 2: ⌊V/2⌋/0, mode 3: 0/3, mode 4: both)."""

    mode: int
    reference_views: int
    context_latent_frames: int
    dropout: bool


@dataclass(frozen=True)
class BatchDraw:
    step: int
    stage_index: int
    resolution: Resolution
    samples: tuple[SampleMode, ...]


@dataclass
class Curriculum:
    stages: list[Stage]
    conditioning_dropout: float = 0.1
    mode2_probability: float = 0.25
    mode3_probability: float = 0.25
    context_latent_frames: int = 3
    name: str = ""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- structure ------------------------------------------------------------------------------
    def validate(self) -> None:
        if not self.stages:
            raise bad_input("no stages", _HINT, where="curriculum:")
        for i, s in enumerate(self.stages):
            where = f"stage {i} ({s.name})"
            if isinstance(s.iterations, bool) or not isinstance(s.iterations, int) or s.iterations < 1:
                raise bad_input(f"{where}: iterations must be a positive integer, got {s.iterations!r}", _HINT,
                                where="curriculum:")
            if not (isinstance(s.learning_rate, (int, float)) and s.learning_rate > 0):
                raise bad_input(f"{where}: learning_rate must be positive, got {s.learning_rate!r}", _HINT,
                                where="curriculum:")
            if isinstance(s.batch_size, bool) or not isinstance(s.batch_size, int) or s.batch_size < 1:
                raise bad_input(f"{where}: batch_size must be a positive integer, got {s.batch_size!r}", _HINT,
                                where="curriculum:")
            if not isinstance(s.warmup_steps, int) or s.warmup_steps < 0:
                raise bad_input(f"{where}: warmup_steps must be a non-negative integer", _HINT, where="curriculum:")
            if not s.resolutions:
                raise bad_input(f"{where}: no resolutions", _HINT, where="curriculum:")
            modes = set(s.modes)
            if not modes or modes - {1, 2, 3, 4} or 1 not in modes:
                raise bad_input(f"{where}: modes must be a subset of 1-4 that includes 1, got {list(s.modes)}", _HINT,
                                where="curriculum:")
            if (4 in modes) != ({2, 3} <= modes):
                raise bad_input(f"{where}: modes 2 and 3 together make mode 4, so list 2, 3 and 4 together "
                           f"(got {sorted(modes)})", _HINT, where="curriculum:")
        for name in ("conditioning_dropout", "mode2_probability", "mode3_probability"):
            p = getattr(self, name)
            if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
                raise bad_input(f"{name} must be a probability, got {p!r}", _HINT, where="curriculum:")
        if not isinstance(self.context_latent_frames, int) or self.context_latent_frames < 1:
            raise bad_input("context_latent_frames must be a positive integer", _HINT, where="curriculum:")

    @property
    def total_iterations(self) -> int:
        return sum(s.iterations for s in self.stages)

    @property
    def resolutions(self) -> list[Resolution]:
        seen: dict[str, Resolution] = {}
        for s in self.stages:
            for r in s.resolutions:
                seen.setdefault(str(r), r)
        return list(seen.values())

    def stage_at(self, step: int) -> tuple[int, Stage, int]:
        """(stage index, stage, step within the stage) of global ``step`` (0-based); past the end: the last."""
        start = 0
        for i, s in enumerate(self.stages):
            if step < start + s.iterations:
                return i, s, step - start
            start += s.iterations
        last = len(self.stages) - 1
        return last, self.stages[last], step - (start - self.stages[last].iterations)

    def learning_rate(self, step: int) -> float:
        _, s, local = self.stage_at(step)
        if s.warmup_steps and local < s.warmup_steps:
            return s.learning_rate * (local + 1) / s.warmup_steps
        return float(s.learning_rate)

    # -- sampling -------------------------------------------------------------------------------
    def draw_resolution(self, rng: np.random.Generator, stage: Stage) -> Resolution:
        return stage.resolutions[int(rng.integers(len(stage.resolutions)))]

    def draw_mode(self, rng: np.random.Generator, stage: Stage, res: Resolution) -> SampleMode:
        u2, u3, ud = rng.random(3)  # always three numbers: the stream does not depend on the branch
        modes = set(stage.modes)
        a = 2 in modes and res.views > 1 and u2 < self.mode2_probability
        b = 3 in modes and res.latent_frames > self.context_latent_frames and u3 < self.mode3_probability
        mode = {(False, False): 1, (True, False): 2, (False, True): 3, (True, True): 4}[(bool(a), bool(b))]
        return SampleMode(mode=mode, reference_views=res.views // 2 if a else 0,
                          context_latent_frames=self.context_latent_frames if b else 0,
                          dropout=bool(ud < self.conditioning_dropout))

    def draw(self, rng: np.random.Generator, step: int, batch: int) -> BatchDraw:
        """Resolution of one micro-batch of ``batch`` samples at global ``step`` and each sample's mode."""
        idx, stage, _ = self.stage_at(step)
        res = self.draw_resolution(rng, stage)
        return BatchDraw(step=step, stage_index=idx, resolution=res,
                         samples=tuple(self.draw_mode(rng, stage, res) for _ in range(batch)))

    def mode_probabilities(self, stage: Stage, res: Resolution) -> dict[int, float]:
        """Exact probabilities of modes 1–4 for ``res`` in ``stage``."""
        modes = set(stage.modes)
        pa = self.mode2_probability if (2 in modes and res.views > 1) else 0.0
        pb = self.mode3_probability if (3 in modes and res.latent_frames > self.context_latent_frames) else 0.0
        return {1: (1 - pa) * (1 - pb), 2: pa * (1 - pb), 3: (1 - pa) * pb, 4: pa * pb}

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "conditioning_dropout": self.conditioning_dropout,
                "mode2_probability": self.mode2_probability, "mode3_probability": self.mode3_probability,
                "context_latent_frames": self.context_latent_frames, "stages": [s.to_json() for s in self.stages],
                **self.extra}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "curriculum") -> "Curriculum":
        if not isinstance(d, Mapping):
            raise bad_input(f"{where} must be a JSON object", _HINT, where="curriculum:")
        known = {"name", "description", "conditioning_dropout", "mode2_probability", "mode3_probability",
                 "context_latent_frames", "stages"}
        stages = []
        for i, s in enumerate(d.get("stages") or []):
            if not isinstance(s, Mapping):
                raise bad_input(f"{where}: stage {i} must be an object", _HINT, where="curriculum:")
            unknown = set(s) - {"name", "iterations", "learning_rate", "resolutions", "modes", "batch_size",
                                "warmup_steps"}
            if unknown:
                raise bad_input(f"{where}: stage {i} has unknown key(s) {sorted(unknown)}", _HINT, where="curriculum:")
            for k in ("iterations", "learning_rate", "resolutions"):
                if k not in s:
                    raise bad_input(f"{where}: stage {i} has no {k!r}", _HINT, where="curriculum:")
            stages.append(Stage(
                name=str(s.get("name", f"stage{i + 1}")), iterations=s["iterations"], learning_rate=s["learning_rate"],
                resolutions=[Resolution.parse(r, f"{where}: stage {i} resolution") for r in s["resolutions"]],
                modes=tuple(int(m) for m in s.get("modes", [1])), batch_size=s.get("batch_size", 64),
                warmup_steps=s.get("warmup_steps", 0)))
        return cls(stages=stages, conditioning_dropout=d.get("conditioning_dropout", 0.1),
                   mode2_probability=d.get("mode2_probability", 0.25), mode3_probability=d.get("mode3_probability", 0.25),
                   context_latent_frames=d.get("context_latent_frames", 3), name=str(d.get("name", "")),
                   description=str(d.get("description", "")), extra={k: v for k, v in d.items() if k not in known})

    def scaled(self, factor: float | None = None, *, iterations: Sequence[int] | None = None,
               batch_size: int | None = None) -> "Curriculum":
        """A copy with stage iterations multiplied by ``factor`` (at least 1) or replaced, and/or one batch size."""
        d = self.to_json()
        for i, s in enumerate(d["stages"]):
            if iterations is not None:
                s["iterations"] = int(iterations[i])
            elif factor is not None:
                s["iterations"] = max(1, int(round(s["iterations"] * factor)))
            if batch_size is not None:
                s["batch_size"] = int(batch_size)
        return Curriculum.from_json(d)


def load_curriculum(spec: str | Path | Mapping[str, Any] | Curriculum) -> Curriculum:
    """A curriculum from a bundled name (``paper``, ``small``, ``tiny``), a JSON file, or a dict."""
    if isinstance(spec, Curriculum):
        return spec
    if isinstance(spec, Mapping):
        return Curriculum.from_json(spec)
    s = str(spec)
    path = CONFIG_DIR / f"{s}.json" if (CONFIG_DIR / f"{s}.json").is_file() and "/" not in s else Path(s)
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise bad_input(f"no curriculum {s!r}",
                        f"Use a JSON file or one of the bundled curricula: {', '.join(names)}.", where="curriculum:")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise bad_input(f"{path} is not valid JSON ({exc})", _HINT, where="curriculum:") from exc
    return Curriculum.from_json(d, where=str(path.name))
