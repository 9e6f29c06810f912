"""The contract between the Blender add-on and the backend: job spec, events, bundle keys.

Defined once here and nowhere else (docs/design.md, "Contracts"). Pure Python: importing this module
must not import torch or numpy, because the add-on imports it inside Blender. Everything is a
dataclass with ``to_json``/``from_json``; ``from_json`` validates and raises
:class:`~backend.errors.MVP4DError` (``BAD_INPUT``) naming the bad field, e.g.
``job.json: cameras.cameras[3].fx must be a positive number``.

Paths inside the spec are relative to the job folder and may not leave it
(:func:`resolve_job_path`). Two things are deliberately *not* job paths because they are the
user's installed resources, not per-job data: the FLAME model (``"toy"`` or an absolute path to the
user's FLAME file) and the MMVDM weights folder (absolute path).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ERROR_CODES, MVP4DError, bad_input
from .jobpaths import check_name, confine, name_key, safe_name, split_rel  # noqa: F401 - safe_name: add-on

SCHEMA_VERSION = 1

#: Bounds of the job spec: beyond these a value is a mistake, not a setting (docs/reliability.md, section 4).
MAX_IMAGE_SIDE = 8192
MAX_FRAMES = 100_000
MAX_CAMERAS = 1024
MAX_STEPS = 1000  # DDIM steps: the schedule has 1000 training timesteps
MAX_SEED = 2**32 - 1
MAX_JOB_JSON_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 64

#: The job's stages in order (backend/stages.py implements them; ``run --until`` takes one of these).
JOB_STAGES = ("track", "corpus", "fit", "export")

#: What the add-on writes into a folder before it starts the backend there (the run's pid and where its
#: events start): the backend's own output checks accept it as part of the run, not as a user's file.
ADDON_RUN_FILE = "blender_backend.json"

# ---------------------------------------------------------------------------------------------
# Quality presets: views, frames, resolution. The add-on shows these; cameras.py builds the rings.
# ---------------------------------------------------------------------------------------------


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

#: Keys of an animation ``.npz`` (driving sequence of FLAME parameters), T frames.
#: ``expr`` is required; the others default to zeros. Extra expression components beyond the
#: model's are an error; fewer are zero-padded.
ANIMATION_KEYS: dict[str, str] = {
    "expr": "(T, E) expression coefficients",
    "jaw_pose": "(T, 3) jaw axis-angle, radians",
    "neck_pose": "(T, 3) neck axis-angle, radians",
    "eye_pose": "(T, 6) left then right eye axis-angle, radians",
    "global_rot": "(T, 3) head rotation axis-angle relative to the reference pose, radians",
    "transl": "(T, 3) head translation relative to the reference pose, metres",
}

#: Keys of a FLAME parameter file (tracking output, or the add-on's posed rig): one frame.
FLAME_PARAM_KEYS: dict[str, str] = {
    "shape": "(S,) identity coefficients",
    "expr": "(E,) expression coefficients",
    "jaw_pose": "(3,)",
    "neck_pose": "(3,)",
    "eye_pose": "(6,)",
    "global_rot": "(3,) axis-angle of the head in FLAME world",
    "transl": "(3,) metres",
}

# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def _fail(where: str, what: str) -> MVP4DError:
    return bad_input(f"{where} {what}", "Fix that field of the job spec (job.json) and run again.")


def _obj(d: Any, where: str) -> dict:
    if not isinstance(d, dict):
        raise _fail(where, "must be a JSON object")
    return d


def _known(d: dict, cls: type, where: str) -> None:
    names = {f.name for f in fields(cls)}
    extra = sorted(set(d) - names)
    if extra:
        raise _fail(f"{where}.{extra[0]}", "is not a known field")


def _num(v: Any, where: str, *, positive: bool = False, minimum: float | None = None,
         maximum: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _fail(where, f"must be a finite number (got {_show(v)})")
    try:
        x = float(v)
    except OverflowError:  # an integer too large for a float
        raise _fail(where, "must be a finite number (got an integer too large)") from None
    if not math.isfinite(x):
        raise _fail(where, f"must be a finite number (got {_show(v)})")
    if positive and x <= 0:
        raise _fail(where, f"must be a positive number (got {_show(v)})")
    if minimum is not None and x < minimum:
        raise _fail(where, f"must be >= {minimum} (got {_show(v)})")
    if maximum is not None and x > maximum:
        raise _fail(where, f"must be <= {maximum} (got {_show(v)})")
    return x


def _int(v: Any, where: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(where, f"must be an integer (got {_show(v)})")
    if minimum is not None and v < minimum:
        raise _fail(where, f"must be >= {minimum} (got {_show(v)})")
    if maximum is not None and v > maximum:
        raise _fail(where, f"must be <= {maximum} (got {_show(v)})")
    return v


def _show(v: Any) -> str:
    """A short, one-line rendering of a bad value for an error message."""
    text = repr(v) if not isinstance(v, int) or isinstance(v, bool) or abs(v) < 10**30 else "a huge integer"
    return text if len(text) <= 60 else text[:57] + "..."


def _str(v: Any, where: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(where, f"must be a non-empty string (got {_show(v)})")
    if any(ord(c) < 32 or ord(c) == 127 for c in v) or len(v) > 4096:
        raise _fail(where, "may not hold control characters (NUL, newline ...) or more than 4096 characters")
    if choices is not None and v not in choices:
        raise _fail(where, f"must be one of {', '.join(choices)} (got {_show(v)})")
    return v


@dataclass(frozen=True)
class Rule:
    """The type and range of one setting: the one way settings outside the fixed spec are declared.

    ``kind`` is ``int``, ``float``, ``bool`` or ``str``; ``lo``/``hi`` bound numbers (``open_lo``
    makes ``lo`` itself invalid, e.g. learning rates must be > 0); ``choices`` lists valid strings;
    ``optional`` allows ``null``. :meth:`check` raises ``BAD_INPUT`` naming ``where``.
    """

    kind: type
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    choices: tuple[str, ...] | None = None
    optional: bool = False

    def check(self, v: Any, where: str) -> Any:
        if v is None and self.optional:
            return None
        if self.kind is bool:
            if not isinstance(v, bool):
                raise _fail(where, f"must be true or false (got {_show(v)})")
            return v
        if self.kind is str:
            return _str(v, where, self.choices)
        if self.kind is dict:
            return _obj(v, where)
        if self.kind is int:
            v = _int(v, where, maximum=None if self.hi is None else int(self.hi))
        else:
            v = _num(v, where, maximum=self.hi)
        if self.lo is not None and (v <= self.lo if self.open_lo else v < self.lo):
            raise _fail(where, f"must be {'>' if self.open_lo else '>='} {self.lo} (got {_show(v)})")
        return v


def check_rules(values: dict[str, Any], rules: dict[str, Rule], where: str) -> dict[str, Any]:
    """Check every value against its rule; a name without a rule is an unknown setting."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if k not in rules:
            raise MVP4DError("BAD_INPUT", f"{where}.{k} is not a known setting",
                             f"Known settings: {', '.join(sorted(rules))}.")
        out[k] = rules[k].check(v, f"{where}.{k}")
    return out


def _rel_path(v: Any, where: str) -> str:
    """A path relative to the job folder that cannot leave it: safe components only (lexical check)."""
    split_rel(v, where)
    return v


def _invertible3(m: list[list[float]]) -> bool:
    """Whether the upper-left 3x3 block of ``m`` is invertible, relative to its size (no numpy here)."""
    a = [r[:3] for r in m[:3]]
    det = (a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
           - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
           + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]))
    size = math.sqrt(sum(x * x for r in a for x in r) / 3.0)
    return math.isfinite(det) and size > 0 and abs(det) > 1e-9 * size**3


def check_device(dev: Any, where: str, *, allow_auto: bool) -> str:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` (and ``auto`` where allowed), else ``BAD_INPUT``."""
    dev = _str(dev, where)
    kind, _, index = dev.partition(":")
    ok = (kind in ("cpu", "cuda", "mps") and not index) or (kind == "cuda" and index.isdigit() and len(index) < 4)
    if not ok and not (allow_auto and dev == "auto"):
        raise _fail(where, f"must be {'auto, ' if allow_auto else ''}cpu, cuda, cuda:N or mps (got {_show(dev)})")
    return dev


def read_bounded(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The bytes of a small file, refusing one larger than ``limit`` before reading it."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise bad_input(f"{what} is larger than {limit // (1024 * 1024)} MB: not a file this program writes",
                        f"Check {path}.")
    return data


def parse_json(data: str | bytes, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON text (UTF-8 when bytes) -> value, or ``BAD_INPUT`` naming ``what``: bad encoding, bad syntax,
    nesting deeper than ``max_depth`` (checked without recursion, so no input can exhaust the stack)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise bad_input(f"{what} is not UTF-8 text (byte {e.start}: {e.reason})",
                            f"Save {what} as UTF-8 (the backend and the add-on write it so).") from None
    depth = deepest = 0
    in_str = esc = False
    for ch in data:  # bracket depth outside strings, before the (recursive) parser sees the text
        if in_str:
            esc, in_str = (False, True) if esc else (ch == "\\", ch != '"')
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                raise bad_input(f"{what} nests deeper than {max_depth} levels: not a file this program writes",
                                f"Check {what}.")
        elif ch in "]}":
            depth -= 1
    try:
        return json.loads(data)
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        raise bad_input(f"{what} is not valid JSON ({str(e)[:200]})", f"Rewrite {what}.") from None


def resolve_job_path(job_dir: str | os.PathLike, rel: str, where: str = "path") -> Path:
    """Resolve ``rel`` inside ``job_dir``; refuse anything (symlinks included) that leaves it."""
    return confine(job_dir, rel, where=where)


# ---------------------------------------------------------------------------------------------
# Job spec
# ---------------------------------------------------------------------------------------------


@dataclass
class CameraSpec:
    """One OpenCV camera in FLAME world space (metres, +y up): 4x4 world->camera, pixel intrinsics."""

    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    world_to_cam: list[list[float]]
    key: bool = False

    @classmethod
    def from_json(cls, d: Any, where: str) -> "CameraSpec":
        d = _obj(d, where)
        _known(d, cls, where)
        for k in ("name", "width", "height", "fx", "fy", "cx", "cy", "world_to_cam"):
            if k not in d:
                raise _fail(f"{where}.{k}", "is missing")
        m = d["world_to_cam"]
        if not (isinstance(m, list) and len(m) == 4 and all(isinstance(r, list) and len(r) == 4 for r in m)):
            raise _fail(f"{where}.world_to_cam", "must be a 4x4 list of lists")
        rows = [[_num(x, f"{where}.world_to_cam[{i}][{j}]") for j, x in enumerate(r)] for i, r in enumerate(m)]
        if rows[3] != [0.0, 0.0, 0.0, 1.0]:
            raise _fail(f"{where}.world_to_cam", "last row must be [0, 0, 0, 1]")
        if not _invertible3(rows):
            raise _fail(f"{where}.world_to_cam", "is singular (its 3x3 part cannot be inverted)")
        key = d.get("key", False)
        if not isinstance(key, bool):
            raise _fail(f"{where}.key", "must be true or false")
        return cls(
            name=check_name(d["name"], f"{where}.name"),  # it names the view's folder
            width=_int(d["width"], f"{where}.width", minimum=8, maximum=MAX_IMAGE_SIDE),
            height=_int(d["height"], f"{where}.height", minimum=8, maximum=MAX_IMAGE_SIDE),
            fx=_num(d["fx"], f"{where}.fx", positive=True, maximum=1e7),
            fy=_num(d["fy"], f"{where}.fy", positive=True, maximum=1e7),
            cx=_num(d["cx"], f"{where}.cx", minimum=-1e7, maximum=1e7),
            cy=_num(d["cy"], f"{where}.cy", minimum=-1e7, maximum=1e7),
            world_to_cam=rows,
            key=key,
        )


@dataclass
class InputsSpec:
    reference_image: str  # job-relative, e.g. "inputs/reference.png"
    flame_model: str = "toy"  # "toy" or an absolute path to the user's FLAME .pkl/.npz (a resource)
    flame_params: str | None = None  # job-relative .npz (FLAME_PARAM_KEYS): given -> no tracking
    reference_camera: CameraSpec | None = None  # required with flame_params: the camera of the photo

    @classmethod
    def from_json(cls, d: Any, where: str = "inputs") -> "InputsSpec":
        d = _obj(d, where)
        _known(d, cls, where)
        if "reference_image" not in d:
            raise _fail(f"{where}.reference_image", "is missing")
        fm = _str(d.get("flame_model", "toy"), f"{where}.flame_model")
        if fm != "toy" and not os.path.isabs(fm):
            raise _fail(f"{where}.flame_model", "must be 'toy' or an absolute path to a FLAME .pkl/.npz")
        fp = d.get("flame_params")
        cam = d.get("reference_camera")
        if (fp is None) != (cam is None):
            raise _fail(f"{where}.reference_camera", "and flame_params must be given together (or neither)")
        return cls(
            reference_image=_rel_path(d["reference_image"], f"{where}.reference_image"),
            flame_model=fm,
            flame_params=None if fp is None else _rel_path(fp, f"{where}.flame_params"),
            reference_camera=None if cam is None else CameraSpec.from_json(cam, f"{where}.reference_camera"),
        )


@dataclass
class AnimationSpec:
    source: str = "builtin:default"  # "builtin:<name>" or a job-relative .npz (ANIMATION_KEYS)
    num_frames: int | None = None  # None: the preset's frame count
    fps: float = DEFAULT_FPS

    @classmethod
    def from_json(cls, d: Any, where: str = "animation") -> "AnimationSpec":
        d = _obj(d, where)
        _known(d, cls, where)
        src = _str(d.get("source", "builtin:default"), f"{where}.source")
        if not src.startswith("builtin:"):
            src = _rel_path(src, f"{where}.source")
        nf = d.get("num_frames")
        if nf is not None:
            nf = _int(nf, f"{where}.num_frames", minimum=1, maximum=MAX_FRAMES)
            if (nf - 1) % 4 != 0:
                raise _fail(f"{where}.num_frames", f"must be 1 + 4k (e.g. 49 or 89), got {nf}")
        return cls(source=src, num_frames=nf, fps=_num(d.get("fps", DEFAULT_FPS), f"{where}.fps", positive=True,
                                                                 maximum=1000.0))


@dataclass
class CamerasSpec:
    preset: str = "preview"  # ring and quality preset (PRESETS)
    resolution: int | None = None  # None: the preset's resolution
    cameras: list[CameraSpec] | None = None  # explicit ring (e.g. from Blender); None: the preset's ring

    @classmethod
    def from_json(cls, d: Any, where: str = "cameras") -> "CamerasSpec":
        d = _obj(d, where)
        _known(d, cls, where)
        preset = _str(d.get("preset", "preview"), f"{where}.preset", tuple(PRESETS))
        res = d.get("resolution")
        if res is not None:
            res = _int(res, f"{where}.resolution", minimum=16, maximum=MAX_IMAGE_SIDE)
            if res % 16:
                raise _fail(f"{where}.resolution", f"must be a multiple of 16, got {res}")
        cams = d.get("cameras")
        if cams is not None:
            if not isinstance(cams, list):
                raise _fail(f"{where}.cameras", "must be a list")
            if not cams:
                raise _fail(f"{where}.cameras", "is empty: the camera ring needs at least one camera")
            if len(cams) > MAX_CAMERAS:
                raise _fail(f"{where}.cameras", f"has {len(cams)} cameras; at most {MAX_CAMERAS} are supported")
            cams = [CameraSpec.from_json(c, f"{where}.cameras[{i}]") for i, c in enumerate(cams)]
            seen: dict[str, int] = {}
            for i, c in enumerate(cams):  # "Cam" and "cam" are one folder on macOS and Windows
                j = seen.setdefault(name_key(c.name), i)
                if j != i:
                    raise _fail(f"{where}.cameras[{i}].name", f"{c.name!r} names the same folder as "
                                f"cameras[{j}].name {cams[j].name!r} (two cameras need two names)")
        return cls(preset=preset, resolution=res, cameras=cams)


@dataclass
class GeneratorSpec:
    """Which generator makes the corpus and how. Memory switches left at None follow the ``vram`` preset."""

    name: str = "projection"
    weights: str | None = None  # absolute path to an MMVDM weights folder (a resource)
    seed: int = 0
    steps_key: int = 100
    steps_other: int = 50
    guidance: str = "multiview"
    sampler: str = "joint"
    dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    vram: str | None = None  # high | medium | low | lowest (None: medium)
    offload: str | None = None
    cfg_passes: str | None = None
    vae_tiling: bool | None = None
    refine_strength: float = 0.6  # preview sampler: share of the schedule left for refinement
    preview_steps: int | None = None
    device: str | None = None  # None: CUDA when available, else CPU; or "cpu", "cuda", "cuda:1", "mps"
    quality: str | None = None  # cap4d: CAP4D_QUALITY name (None: CAP4D_QUALITY_FOR_PRESET of the camera preset)
    cfg_angle: str = "reference_image"  # mmvdm: CFG grows with the angle to the reference image | closest_reference

    @classmethod
    def from_json(cls, d: Any, where: str = "generator") -> "GeneratorSpec":
        d = _obj(d, where)
        _known(d, cls, where)
        w = d.get("weights")
        if w is not None and not os.path.isabs(_str(w, f"{where}.weights")):
            raise _fail(f"{where}.weights", "must be an absolute path to the weights folder")

        def opt(key: str, choices: tuple[str, ...]) -> str | None:
            v = d.get(key)
            return None if v is None else _str(v, f"{where}.{key}", choices)

        tiling = d.get("vae_tiling")
        if tiling is not None and not isinstance(tiling, bool):
            raise _fail(f"{where}.vae_tiling", "must be true, false or null")
        refine = _num(d.get("refine_strength", 0.6), f"{where}.refine_strength", minimum=0.0)
        if refine > 1.0:
            raise _fail(f"{where}.refine_strength", "must be <= 1")
        ps = d.get("preview_steps")
        dev = d.get("device")
        if dev is not None:
            dev = _str(dev, f"{where}.device")
            check_device(dev, f"{where}.device", allow_auto=False)
        return cls(
            name=_str(d.get("name", "projection"), f"{where}.name", GENERATORS),
            weights=w,
            seed=_int(d.get("seed", 0), f"{where}.seed", minimum=0, maximum=MAX_SEED),
            steps_key=_int(d.get("steps_key", 100), f"{where}.steps_key", minimum=1, maximum=MAX_STEPS),
            steps_other=_int(d.get("steps_other", 50), f"{where}.steps_other", minimum=1, maximum=MAX_STEPS),
            guidance=_str(d.get("guidance", "multiview"), f"{where}.guidance", GUIDANCE_MODES),
            sampler=_str(d.get("sampler", "joint"), f"{where}.sampler", SAMPLERS),
            dtype=_str(d.get("dtype", "auto"), f"{where}.dtype", DTYPES),
            vram=opt("vram", VRAM_PRESETS),
            offload=opt("offload", OFFLOAD_MODES),
            cfg_passes=opt("cfg_passes", CFG_PASSES),
            vae_tiling=tiling,
            refine_strength=refine,
            preview_steps=None if ps is None else _int(ps, f"{where}.preview_steps", minimum=1, maximum=MAX_STEPS),
            device=dev,
            quality=opt("quality", tuple(CAP4D_QUALITY)),
            cfg_angle=_str(d.get("cfg_angle", "reference_image"), f"{where}.cfg_angle", CFG_ANGLE_MODES),
        )


@dataclass
class OutputsSpec:
    corpus_format: str = "png"

    @classmethod
    def from_json(cls, d: Any, where: str = "outputs") -> "OutputsSpec":
        d = _obj(d, where)
        _known(d, cls, where)
        return cls(corpus_format=_str(d.get("corpus_format", "png"), f"{where}.corpus_format", CORPUS_FORMATS))


@dataclass
class JobSpec:
    """``job.json``: everything a job needs besides the files under ``inputs/``."""

    inputs: InputsSpec
    animation: AnimationSpec = field(default_factory=AnimationSpec)
    cameras: CamerasSpec = field(default_factory=CamerasSpec)
    generator: GeneratorSpec = field(default_factory=GeneratorSpec)
    fit: dict[str, Any] = field(default_factory=dict)  # avatar fitting settings (fitting issue)
    outputs: OutputsSpec = field(default_factory=OutputsSpec)
    schema_version: int = SCHEMA_VERSION

    @property
    def preset(self) -> QualityPreset:
        return PRESETS[self.cameras.preset]

    @property
    def num_frames(self) -> int:
        return self.animation.num_frames or self.preset.num_frames

    @property
    def resolution(self) -> int:
        return self.cameras.resolution or self.preset.resolution

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, d: Any) -> "JobSpec":
        d = _obj(d, "job.json")
        _known(d, cls, "job.json")
        v = d.get("schema_version")
        if isinstance(v, bool) or not isinstance(v, int) or v != SCHEMA_VERSION:
            raise _fail("job.json: schema_version", f"must be {SCHEMA_VERSION} (got {v!r})")
        if "inputs" not in d:
            raise _fail("job.json: inputs", "is missing")
        fit = d.get("fit", {})
        if not isinstance(fit, dict):
            raise _fail("job.json: fit", "must be a JSON object")
        return cls(
            inputs=InputsSpec.from_json(d["inputs"], "job.json: inputs"),
            animation=AnimationSpec.from_json(d.get("animation", {}), "job.json: animation"),
            cameras=CamerasSpec.from_json(d.get("cameras", {}), "job.json: cameras"),
            generator=GeneratorSpec.from_json(d.get("generator", {}), "job.json: generator"),
            fit=fit,
            outputs=OutputsSpec.from_json(d.get("outputs", {}), "job.json: outputs"),
            schema_version=v,
        )

    @classmethod
    def loads(cls, text: str | bytes) -> "JobSpec":
        return cls.from_json(parse_json(text, "job.json"))

    @classmethod
    def load(cls, job_dir: str | os.PathLike) -> "JobSpec":
        path = confine(job_dir, "job.json", where="job.json")  # a link out of the job is refused
        if not path.is_file():
            raise MVP4DError("BAD_INPUT", f"no job.json in {job_dir}", "Create the job with 'corpus' or the add-on.")
        return cls.loads(read_bounded(path, MAX_JOB_JSON_BYTES, "job.json"))

    def check_paths(self, job_dir: str | os.PathLike) -> None:
        """Check every job-relative path resolves inside ``job_dir`` (symlinks included)."""
        resolve_job_path(job_dir, self.inputs.reference_image, "job.json: inputs.reference_image")
        if self.inputs.flame_params:
            resolve_job_path(job_dir, self.inputs.flame_params, "job.json: inputs.flame_params")
        if not self.animation.source.startswith("builtin:"):
            resolve_job_path(job_dir, self.animation.source, "job.json: animation.source")


# ---------------------------------------------------------------------------------------------
# Events (events.jsonl and stdout, one JSON object per line)
# ---------------------------------------------------------------------------------------------

EVENT_TYPES = ("stage", "progress", "preview", "log", "warning", "error", "done")
STAGE_STATUSES = ("start", "end", "skip")


@dataclass
class Event:
    """One event. ``type`` picks which of the optional fields are required (see ``_REQUIRED``)."""

    type: str
    t: float = field(default_factory=time.time)
    stage: str | None = None
    status: str | None = None  # stage: start | end | skip
    done: int | None = None  # progress
    total: int | None = None  # progress
    eta_s: float | None = None  # progress; None when unknown
    path: str | None = None  # preview: job-relative image path
    message: str | None = None  # log, warning, error
    code: str | None = None  # error (ERROR_CODES), optional on warning
    hint: str | None = None  # error
    outputs: dict[str, str] | None = None  # done: name -> job-relative path

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls, d: Any) -> "Event":
        d = _obj(d, "event")
        _known(d, cls, "event")
        etype = _str(d.get("type"), "event.type", EVENT_TYPES)
        for k in _REQUIRED[etype]:
            if d.get(k) is None:
                raise _fail(f"event({etype}).{k}", "is missing")
        if etype == "stage":
            _str(d["status"], "event(stage).status", STAGE_STATUSES)
        if etype == "error":
            _str(d["code"], "event(error).code", tuple(ERROR_CODES))
        if etype == "progress":
            _int(d["done"], "event(progress).done", minimum=0)
            _int(d["total"], "event(progress).total", minimum=0)
        return cls(**d)

    @classmethod
    def loads(cls, line: str) -> "Event":
        try:
            return cls.from_json(parse_json(line, "event line"))
        except MVP4DError as e:
            raise MVP4DError("BAD_INPUT", f"{e.message}: {line[:80]!r}") from None


_REQUIRED: dict[str, tuple[str, ...]] = {
    "stage": ("stage", "status"),
    "progress": ("stage", "done", "total"),
    "preview": ("path",),
    "log": ("message",),
    "warning": ("message",),
    "error": ("code", "message", "hint"),
    "done": (),
}


def error_event(err: MVP4DError, stage: str | None = None) -> Event:
    return Event("error", stage=stage, code=err.code, message=err.message, hint=err.hint)


# ---------------------------------------------------------------------------------------------
# Avatar bundle keys (avatar.safetensors). Shapes: N Gaussians, F faces, V vertices, T frames.
# ---------------------------------------------------------------------------------------------

BUNDLE_SCHEMA_VERSION = 1

BUNDLE_TENSORS: dict[str, str] = {
    "gaussians.parent_face": "(N,) int32 index of the parent triangle",
    "gaussians.local_position": "(N, 3) float32, triangle-local, in units of the triangle's size",
    "gaussians.local_rotation": "(N, 4) float32 quaternion wxyz, triangle-local",
    "gaussians.log_scale": "(N, 3) float32, log of scale relative to the triangle's size",
    "gaussians.opacity_logit": "(N,) float32",
    "gaussians.sh": "(N, K, 3) float32 spherical-harmonic coefficients, K = (degree + 1)^2",
    "mesh.faces": "(F, 3) int32",
    "mesh.rest_vertices": "(V, 3) float32 FLAME space with identity applied, neutral expression",
    "animation.expr": "(T, E) float32",
    "animation.jaw_pose": "(T, 3) float32",
    "animation.neck_pose": "(T, 3) float32",
    "animation.eye_pose": "(T, 6) float32",
    "animation.global_rot": "(T, 3) float32",
    "animation.transl": "(T, 3) float32",
    "animation.vertices": "(T, V, 3) float16 posed vertices per frame",
    "animation.detail_offsets": "(T, N, 3) float16 optional per-frame fine-detail offsets (local units)",
}
BUNDLE_OPTIONAL = ("animation.detail_offsets",)
BUNDLE_METADATA_KEYS = ("schema_version", "fps", "num_frames", "flame_model_id", "camera_ring", "generator", "settings")
