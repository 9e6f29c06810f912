"""``job.json``: the job spec (inputs, animation, cameras, generator, fit settings, outputs).

Paths inside the spec are relative to the job folder and may not leave it
(:func:`~backend.contract.validation.resolve_job_path`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import SPEC_FIELD_HINT, MVP4DError, bad_input
from ..jobpaths import check_name, confine, name_key
from .executor_spec import ExecutorSpec
from .presets import (CAP4D_QUALITY, CFG_ANGLE_MODES, CFG_PASSES, CORPUS_FORMATS, DEFAULT_FPS, DTYPES, GENERATORS, GUIDANCE_MODES,
                      OFFLOAD_MODES, PRESETS, SAMPLERS, VRAM_PRESETS, QualityPreset)
from .validation import (MAX_CAMERAS, MAX_FRAMES, MAX_IMAGE_SIDE, MAX_JOB_JSON_BYTES, MAX_SEED, MAX_STEPS,
                         _int, _invertible3, _known, _num, _obj, _rel_path, _str, check_device, parse_json,
                         read_bounded, resolve_job_path)


SCHEMA_VERSION = 1


#: The job's stages in order (backend/job_stages.py implements them; ``run --until`` takes one of these).
JOB_STAGES = ("track", "corpus", "fit", "export")

#: What the add-on writes into a folder before it starts the backend there (the run's pid and where its
#: events start): the backend's own output checks accept it as part of the run, not as a user's file.
ADDON_RUN_FILE = "blender_backend.json"


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
                raise bad_input("is missing", SPEC_FIELD_HINT, where=f"{where}.{k}")
        m = d["world_to_cam"]
        if not (isinstance(m, list) and len(m) == 4 and all(isinstance(r, list) and len(r) == 4 for r in m)):
            raise bad_input("must be a 4x4 list of lists", SPEC_FIELD_HINT, where=f"{where}.world_to_cam")
        rows = [[_num(x, f"{where}.world_to_cam[{i}][{j}]") for j, x in enumerate(r)] for i, r in enumerate(m)]
        if rows[3] != [0.0, 0.0, 0.0, 1.0]:
            raise bad_input("last row must be [0, 0, 0, 1]", SPEC_FIELD_HINT, where=f"{where}.world_to_cam")
        if not _invertible3(rows):
            raise bad_input("is singular (its 3x3 part cannot be inverted)", SPEC_FIELD_HINT,
                            where=f"{where}.world_to_cam")
        key = d.get("key", False)
        if not isinstance(key, bool):
            raise bad_input("must be true or false", SPEC_FIELD_HINT, where=f"{where}.key")
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
            raise bad_input("is missing", SPEC_FIELD_HINT, where=f"{where}.reference_image")
        fm = _str(d.get("flame_model", "toy"), f"{where}.flame_model")
        if fm != "toy" and not os.path.isabs(fm):
            raise bad_input("must be 'toy' or an absolute path to a FLAME .pkl/.npz", SPEC_FIELD_HINT,
                            where=f"{where}.flame_model")
        fp = d.get("flame_params")
        cam = d.get("reference_camera")
        if (fp is None) != (cam is None):
            raise bad_input("and flame_params must be given together (or neither)", SPEC_FIELD_HINT,
                            where=f"{where}.reference_camera")
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
                raise bad_input(f"must be 1 + 4k (e.g. 49 or 89), got {nf}", SPEC_FIELD_HINT,
                                where=f"{where}.num_frames")
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
                raise bad_input(f"must be a multiple of 16, got {res}", SPEC_FIELD_HINT, where=f"{where}.resolution")
        cams = d.get("cameras")
        if cams is not None:
            if not isinstance(cams, list):
                raise bad_input("must be a list", SPEC_FIELD_HINT, where=f"{where}.cameras")
            if not cams:
                raise bad_input("is empty: the camera ring needs at least one camera", SPEC_FIELD_HINT,
                                where=f"{where}.cameras")
            if len(cams) > MAX_CAMERAS:
                raise bad_input(f"has {len(cams)} cameras; at most {MAX_CAMERAS} are supported", SPEC_FIELD_HINT,
                                where=f"{where}.cameras")
            cams = [CameraSpec.from_json(c, f"{where}.cameras[{i}]") for i, c in enumerate(cams)]
            seen: dict[str, int] = {}
            for i, c in enumerate(cams):  # "Cam" and "cam" are one folder on macOS and Windows
                j = seen.setdefault(name_key(c.name), i)
                if j != i:
                    raise bad_input(f"{c.name!r} names the same folder as "
                                f"cameras[{j}].name {cams[j].name!r} (two cameras need two names)", SPEC_FIELD_HINT,
                                where=f"{where}.cameras[{i}].name")
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
            raise bad_input("must be an absolute path to the weights folder", SPEC_FIELD_HINT, where=f"{where}.weights")

        def opt(key: str, choices: tuple[str, ...]) -> str | None:
            v = d.get(key)
            return None if v is None else _str(v, f"{where}.{key}", choices)

        tiling = d.get("vae_tiling")
        if tiling is not None and not isinstance(tiling, bool):
            raise bad_input("must be true, false or null", SPEC_FIELD_HINT, where=f"{where}.vae_tiling")
        refine = _num(d.get("refine_strength", 0.6), f"{where}.refine_strength", minimum=0.0)
        if refine > 1.0:
            raise bad_input("must be <= 1", SPEC_FIELD_HINT, where=f"{where}.refine_strength")
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
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)  # how units run (backend/executors)

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
            raise bad_input(f"must be {SCHEMA_VERSION} (got {v!r})", SPEC_FIELD_HINT, where="job.json: schema_version")
        if "inputs" not in d:
            raise bad_input("is missing", SPEC_FIELD_HINT, where="job.json: inputs")
        fit = d.get("fit", {})
        if not isinstance(fit, dict):
            raise bad_input("must be a JSON object", SPEC_FIELD_HINT, where="job.json: fit")
        return cls(
            inputs=InputsSpec.from_json(d["inputs"], "job.json: inputs"),
            animation=AnimationSpec.from_json(d.get("animation", {}), "job.json: animation"),
            cameras=CamerasSpec.from_json(d.get("cameras", {}), "job.json: cameras"),
            generator=GeneratorSpec.from_json(d.get("generator", {}), "job.json: generator"),
            fit=fit,
            outputs=OutputsSpec.from_json(d.get("outputs", {}), "job.json: outputs"),
            schema_version=v,
            executor=ExecutorSpec.from_json(d.get("executor", {}), "job.json: executor"),
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
