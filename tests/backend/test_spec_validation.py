"""Issue 14, class 4: the whole spec is checked when a job is created and again before any stage runs.

Each variant below breaks one field of a valid ``job.json`` (or one input file, or ``--until``); the run
must end with ``BAD_INPUT`` naming that field and must not have started a stage (no ``stages/``).
Variants include the issue's examples and others written for this test.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import fields

import numpy as np
import pytest

from backend.avatar.settings import DENSIFY_RULES, FIT_RULES, DensifyStrategy, FitSettings
from backend.errors import MVP4DError
from backend.events import EventSink, read_events
from backend.jobs import create_job, run_job
from backend.preflight import check_job
from backend.protocol import JOB_STAGES, InputsSpec, JobSpec

I4 = [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0.5], [0, 0, 0, 1.0]]
CAM = {"name": "c0", "width": 64, "height": 64, "fx": 50.0, "fy": 50.0, "cx": 32.0, "cy": 32.0,
       "world_to_cam": I4, "key": True}


def _cam(**kw):
    c = copy.deepcopy(CAM)
    c.update(kw)
    return c


# (id, dotted field, value, text the message must contain)
SPEC_VARIANTS = [
    ("schema-bool", "schema_version", True, "schema_version"),
    ("schema-float", "schema_version", 1.0, "schema_version"),
    ("schema-str", "schema_version", "1", "schema_version"),
    ("schema-future", "schema_version", 2, "schema_version"),
    ("unknown-top", "colour", "blue", "job.json.colour"),
    ("ref-escapes", "inputs.reference_image", "../face.png", "inputs.reference_image"),
    ("ref-absolute", "inputs.reference_image", "/etc/passwd", "inputs.reference_image"),
    ("ref-nul", "inputs.reference_image", "inputs/a\x00.png", "inputs.reference_image"),
    ("ref-number", "inputs.reference_image", 5, "inputs.reference_image"),
    ("ref-missing-file", "inputs.reference_image", "inputs/other.png", "inputs.reference_image"),
    ("flame-relative", "inputs.flame_model", "flame.pkl", "inputs.flame_model"),
    ("flame-newline", "inputs.flame_model", "/x/fl\name.pkl", "inputs.flame_model"),
    ("frames-not-4k", "animation.num_frames", 6, "animation.num_frames"),
    ("frames-bool", "animation.num_frames", True, "animation.num_frames"),
    ("frames-huge", "animation.num_frames", 10**9 + 1, "animation.num_frames"),
    ("frames-str", "animation.num_frames", "17", "animation.num_frames"),
    ("fps-zero", "animation.fps", 0, "animation.fps"),
    ("fps-nan", "animation.fps", math.nan, "animation.fps"),
    ("fps-inf", "animation.fps", math.inf, "animation.fps"),
    ("fps-bigint", "animation.fps", 10**400, "animation.fps"),
    ("builtin-unknown", "animation.source", "builtin:dance", "animation.source"),
    ("anim-escapes", "animation.source", "../anim.npz", "animation.source"),
    ("anim-missing", "animation.source", "inputs/none.npz", "none.npz"),
    ("preset-unknown", "cameras.preset", "huge", "cameras.preset"),
    ("res-not-16", "cameras.resolution", 100, "cameras.resolution"),
    ("res-huge", "cameras.resolution", 10**6, "cameras.resolution"),
    ("res-float", "cameras.resolution", 128.0, "cameras.resolution"),
    ("cams-empty", "cameras.cameras", [], "cameras.cameras"),
    ("cams-not-list", "cameras.cameras", {"a": 1}, "cameras.cameras"),
    ("cam-fx-zero", "cameras.cameras", [_cam(fx=0)], "cameras.cameras[0].fx"),
    ("cam-fy-negative", "cameras.cameras", [_cam(fy=-3.0)], "cameras.cameras[0].fy"),
    ("cam-fx-nan", "cameras.cameras", [_cam(fx=math.nan)], "cameras.cameras[0].fx"),
    ("cam-cx-inf", "cameras.cameras", [_cam(cx=math.inf)], "cameras.cameras[0].cx"),
    ("cam-width-bool", "cameras.cameras", [_cam(width=True)], "cameras.cameras[0].width"),
    ("cam-width-huge", "cameras.cameras", [_cam(width=10**6)], "cameras.cameras[0].width"),
    ("cam-singular", "cameras.cameras", [_cam(world_to_cam=[[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])],
     "cameras.cameras[0].world_to_cam"),
    ("cam-zero", "cameras.cameras", [_cam(world_to_cam=[[0] * 4, [0] * 4, [0] * 4, [0, 0, 0, 1]])],
     "cameras.cameras[0].world_to_cam"),
    ("cam-inf", "cameras.cameras", [_cam(world_to_cam=[[math.inf, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])],
     "cameras.cameras[0].world_to_cam[0][0]"),
    ("cam-3x3", "cameras.cameras", [_cam(world_to_cam=[[1, 0, 0], [0, 1, 0], [0, 0, 1]])],
     "cameras.cameras[0].world_to_cam"),
    ("cam-last-row", "cameras.cameras", [_cam(world_to_cam=[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]])],
     "cameras.cameras[0].world_to_cam"),
    ("cam-duplicate", "cameras.cameras", [_cam(), _cam()], "cameras.cameras"),
    ("cam-key-int", "cameras.cameras", [_cam(key=1)], "cameras.cameras[0].key"),
    ("gen-unknown", "generator.name", "dalle", "generator.name"),
    ("seed-negative", "generator.seed", -1, "generator.seed"),
    ("seed-huge", "generator.seed", 2**40, "generator.seed"),
    ("steps-zero", "generator.steps_key", 0, "generator.steps_key"),
    ("steps-huge", "generator.steps_other", 10**6, "generator.steps_other"),
    ("dtype-fp8", "generator.dtype", "fp8", "generator.dtype"),
    ("device-tpu", "generator.device", "tpu", "generator.device"),
    ("device-cuda-x", "generator.device", "cuda:x", "generator.device"),
    ("refine-2", "generator.refine_strength", 2.0, "generator.refine_strength"),
    ("tiling-str", "generator.vae_tiling", "yes", "generator.vae_tiling"),
    ("weights-relative", "generator.weights", "weights/mmvdm", "generator.weights"),
    ("vram-bogus", "generator.vram", "infinite", "generator.vram"),
    ("fit-list", "fit", [], "fit"),
    ("fit-unknown", "fit", {"warp_speed": 9}, "fit.warp_speed"),
    ("fit-preset", "fit", {"preset": "huge"}, "fit.preset"),
    ("lr-zero", "fit", {"lr_position": 0}, "fit.lr_position"),
    ("lr-negative", "fit", {"lr_unet": -1e-4}, "fit.lr_unet"),
    ("lr-str", "fit", {"lr_sh": "fast"}, "fit.lr_sh"),
    ("lr-nan", "fit", {"lr_opacity": math.nan}, "fit.lr_opacity"),
    ("lr-bool", "fit", {"lr_scale": True}, "fit.lr_scale"),
    ("iterations-zero", "fit", {"iterations": 0}, "fit.iterations"),
    ("iterations-float", "fit", {"iterations": 1.5}, "fit.iterations"),
    ("iterations-bool", "fit", {"iterations": True}, "fit.iterations"),
    ("log-every-zero", "fit", {"log_every": 0}, "fit.log_every"),
    ("checkpoint-negative", "fit", {"checkpoint_every": -5}, "fit.checkpoint_every"),
    ("checkpoint-float", "fit", {"checkpoint_every": 0.5}, "fit.checkpoint_every"),
    ("fit-res-small", "fit", {"resolution": 8}, "fit.resolution"),
    ("unet-depth", "fit", {"unet_depth": 20}, "fit.unet_depth"),
    ("unet-divisible", "fit", {"unet_resolution": 40, "unet_depth": 4}, "fit.unet_resolution"),
    ("fit-device", "fit", {"device": "gpu"}, "fit.device"),
    ("threads-zero", "fit", {"threads": 0}, "fit.threads"),
    ("sh-degree", "fit", {"sh_degree": 4}, "fit.sh_degree"),
    ("dropout", "fit", {"backface_dropout": 1.5}, "fit.backface_dropout"),
    ("opacity-one", "fit", {"init_opacity": 1.0}, "fit.init_opacity"),
    ("use-sfm-int", "fit", {"use_sfm": 1}, "fit.use_sfm"),
    ("train-frames", "fit", {"train_frames": "odd"}, "fit.train_frames"),
    ("densify-str", "fit", {"densify": "many"}, "fit.densify"),
    ("densify-unknown", "fit", {"densify": {"bogus": 1}}, "fit.densify.bogus"),
    ("densify-max-zero", "fit", {"densify": {"max_gaussians": 0}}, "fit.densify.max_gaussians"),
    ("densify-every-float", "fit", {"densify": {"refine_every": 10.5}}, "fit.densify.refine_every"),
    ("densify-prune-opa", "fit", {"densify": {"prune_opa": 2.0}}, "fit.densify.prune_opa"),
    ("corpus-format", "outputs.corpus_format", "jpg", "outputs.corpus_format"),
]


def _set(d: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value


def _run_refused(job, field_text: str, until: str | None = None) -> MVP4DError | None:
    code = run_job(job, until=until, sink=EventSink(job / "events.jsonl", stream=None))
    last = read_events(job / "events.jsonl")[-1]
    assert code == 1 and (last.type, last.code) == ("error", "BAD_INPUT"), last
    assert field_text in last.message, last.message
    assert last.hint and "\n" not in last.message
    assert not (job / "stages").exists(), "a stage started before the spec was checked"
    return last


def test_the_base_job_passes(job):
    check_job(JobSpec.load(job), job, until="corpus")


@pytest.mark.parametrize("variant", SPEC_VARIANTS, ids=[v[0] for v in SPEC_VARIANTS])
def test_bad_field_is_refused_before_any_stage(job, variant):
    _, dotted, value, field_text = variant
    d = json.loads((job / "job.json").read_text())
    _set(d, dotted, value)
    (job / "job.json").write_text(json.dumps(d))  # NaN/Infinity written as JSON allows them
    _run_refused(job, field_text)


def _anim(job, **arrays) -> None:
    np.savez(job / "inputs" / "anim.npz", **arrays)
    d = json.loads((job / "job.json").read_text())
    d["animation"]["source"] = "inputs/anim.npz"
    (job / "job.json").write_text(json.dumps(d))


T = 5
ANIM_VARIANTS = {
    "complex": dict(expr=np.zeros((T, 10), np.complex64)),
    "nan": dict(expr=np.full((T, 10), np.nan, np.float32)),
    "inf-pose": dict(expr=np.zeros((T, 10), np.float32), jaw_pose=np.full((T, 3), np.inf)),
    "huge": dict(expr=np.full((T, 10), 1e30)),
    "bool": dict(expr=np.zeros((T, 10), bool)),
    "text": dict(expr=np.array([["a"] * 10] * T)),
    "wrong-pose-size": dict(expr=np.zeros((T, 10)), jaw_pose=np.zeros((T, 2))),
    "frame-count-differs": dict(expr=np.zeros((T, 10)), neck_pose=np.zeros((T + 1, 3))),
    "3d-expr": dict(expr=np.zeros((T, 10, 2))),
    "no-expr": dict(jaw_pose=np.zeros((T, 3))),
    "unknown-key": dict(expr=np.zeros((T, 10)), tongue=np.zeros((T, 1))),
}


@pytest.mark.parametrize("name", list(ANIM_VARIANTS))
def test_bad_animation_data_is_refused_before_any_stage(job, name):
    _anim(job, **ANIM_VARIANTS[name])
    _run_refused(job, "anim.npz")


def test_animation_file_that_is_not_an_npz(job):
    _anim(job, expr=np.zeros((T, 10)))
    (job / "inputs" / "anim.npz").write_bytes(b"PK\x03\x04 not really a zip")
    _run_refused(job, "anim.npz")


def test_bad_animation_is_refused_at_creation_too(tmp_path):
    img = tmp_path / "face.png"
    img.write_bytes(b"\x89PNG fake")
    anim = tmp_path / "anim.npz"
    np.savez(anim, expr=np.ones((T, 10), np.complex128))
    with pytest.raises(MVP4DError, match="anim.npz") as ei:
        create_job(tmp_path / "job", img, animation_file=anim)
    assert ei.value.code == "BAD_INPUT" and not (tmp_path / "job").exists()


@pytest.mark.parametrize("until", ["bogus", "", "Track", "corpus "])
def test_until_must_name_a_stage(job, until):
    _run_refused(job, "--until", until=until)


@pytest.mark.parametrize("text, what", [
    ("café".encode("latin-1"), "UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nests deeper"),
    (b'{"inputs": ' * 5000 + b"1" + b"}" * 5000, "nests deeper"),
    (b"", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"schema_version": 1, "inputs": {"reference_image": "inputs/reference.png"}} trailing', "not valid JSON"),
    (b"\x00\x00\x00\x00", "not valid JSON"),
])
def test_unreadable_job_json_is_refused(job, text, what):
    (job / "job.json").write_bytes(text)
    _run_refused(job, what)


@pytest.mark.parametrize("change", [
    lambda s: setattr(s, "schema_version", True),
    lambda s: setattr(s.generator, "seed", -1),
    lambda s: setattr(s.animation, "fps", float("nan")),
    lambda s: s.fit.update(lr_position=0.0),
    lambda s: s.fit.update(densify={"max_gaussians": -1}),
])
def test_create_job_refuses_a_bad_spec_built_in_code(tmp_path, change):
    img = tmp_path / "face.png"
    img.write_bytes(b"\x89PNG fake")
    spec = JobSpec(inputs=InputsSpec(reference_image=""))
    change(spec)
    with pytest.raises(MVP4DError) as ei:
        create_job(tmp_path / "job", img, spec)
    assert ei.value.code == "BAD_INPUT" and "job.json: " in ei.value.message
    assert not (tmp_path / "job").exists()


def test_every_setting_has_a_rule_and_the_stage_list_matches():
    assert set(FIT_RULES) == {f.name for f in fields(FitSettings)}
    assert set(DENSIFY_RULES) == {f.name for f in fields(DensifyStrategy)}
    for preset in ("tiny", "preview", "120", "360"):
        FitSettings.from_json({}, preset).validate()  # every preset obeys its own rules
    from backend.job_stages import STAGES

    assert tuple(st.name for st in STAGES) == JOB_STAGES
