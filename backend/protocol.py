"""The contract between the Blender add-on and the backend: job spec, events, bundle keys.

Defined once and imported from here (docs/design.md, "Contracts"); the definitions live in
:mod:`backend.contract` by topic (presets, validation, jobspec, event_schema, file_formats). Pure
Python: importing this module must not import torch or numpy, because the add-on imports it inside
Blender. Everything is a dataclass with ``to_json``/``from_json``; ``from_json`` validates and raises
:class:`~backend.errors.MVP4DError` (``BAD_INPUT``) naming the bad field, e.g.
``job.json: cameras.cameras[3].fx must be a positive number``.

Paths inside the spec are relative to the job folder and may not leave it
(:func:`resolve_job_path`). Two things are deliberately *not* job paths because they are the
user's installed resources, not per-job data: the FLAME model (``"toy"`` or an absolute path to the
user's FLAME file) and the MMVDM weights folder (absolute path).
"""

from __future__ import annotations

from .contract.presets import (BUILTIN_ANIMATIONS, CAP4D_LICENCE, CAP4D_QUALITY, CAP4D_QUALITY_FOR_PRESET, CFG_ANGLE_MODES, CFG_PASSES,
                               CORPUS_FORMATS, CROP_SCALE, DEFAULT_FPS, DTYPES, GENERATORS, GUIDANCE_MODES,
                               OFFLOAD_MODES, PRESETS, RING_LAYOUTS, SAMPLERS, VRAM_PRESETS, QualityPreset)
from .contract.validation import (MAX_CAMERAS, MAX_FRAMES, MAX_IMAGE_SIDE, MAX_JOB_JSON_BYTES, MAX_JSON_DEPTH,
                                  MAX_SEED, MAX_STEPS, Rule, check_device, check_rules, parse_json, read_bounded,
                                  resolve_job_path)
from .contract.jobspec import (ADDON_RUN_FILE, JOB_STAGES, SCHEMA_VERSION, AnimationSpec, CameraSpec, CamerasSpec,
                               GeneratorSpec, InputsSpec, JobSpec, OutputsSpec)
from .contract.executor_spec import EXECUTORS, ExecutorSpec
from .contract.event_schema import EVENT_TYPES, STAGE_STATUSES, Event, error_event
from .contract.file_formats import (ANIMATION_KEYS, BUNDLE_METADATA_KEYS, BUNDLE_OPTIONAL, BUNDLE_SCHEMA_VERSION,
                                    BUNDLE_TENSORS, FLAME_PARAM_KEYS)
from .errors import ERROR_CODES, MVP4DError, bad_input
from .jobpaths import check_name, confine, name_key, safe_name, split_rel  # the add-on names camera objects with these

__all__ = [
    "ERROR_CODES", "MVP4DError", "bad_input", "check_name", "confine", "name_key", "split_rel",
    "ADDON_RUN_FILE", "ANIMATION_KEYS", "AnimationSpec", "BUILTIN_ANIMATIONS", "BUNDLE_METADATA_KEYS",
    "BUNDLE_OPTIONAL", "BUNDLE_SCHEMA_VERSION", "BUNDLE_TENSORS", "CAP4D_LICENCE", "CAP4D_QUALITY",
    "CAP4D_QUALITY_FOR_PRESET", "CFG_ANGLE_MODES", "CFG_PASSES", "CORPUS_FORMATS", "CROP_SCALE", "CameraSpec", "CamerasSpec",
    "DEFAULT_FPS", "DTYPES", "EVENT_TYPES", "EXECUTORS", "ExecutorSpec", "Event", "FLAME_PARAM_KEYS", "GENERATORS", "GUIDANCE_MODES",
    "GeneratorSpec", "InputsSpec", "JOB_STAGES", "JobSpec", "MAX_CAMERAS", "MAX_FRAMES", "MAX_IMAGE_SIDE",
    "MAX_JOB_JSON_BYTES", "MAX_JSON_DEPTH", "MAX_SEED", "MAX_STEPS", "OFFLOAD_MODES", "OutputsSpec", "PRESETS",
    "QualityPreset", "RING_LAYOUTS", "Rule", "SAMPLERS", "SCHEMA_VERSION", "STAGE_STATUSES", "VRAM_PRESETS",
    "check_device", "check_rules", "error_event", "parse_json", "read_bounded", "resolve_job_path", "safe_name",
]
