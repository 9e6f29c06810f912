"""The add-on/backend contract: JSON round trips, validation naming the bad field, no heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from backend.errors import MVP4DError
from backend.protocol import (
    PRESETS,
    AnimationSpec,
    CamerasSpec,
    CameraSpec,
    Event,
    InputsSpec,
    JobSpec,
    resolve_job_path,
)


def _camera(name="cam0", key=True):
    return CameraSpec(name=name, width=64, height=64, fx=100.0, fy=100.0, cx=31.5, cy=31.5,
                      world_to_cam=[[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1.0], [0, 0, 0, 1]], key=key)


def _spec(**kw):
    return JobSpec(inputs=InputsSpec(reference_image="inputs/reference.png"), **kw)


def test_import_pulls_in_neither_torch_nor_numpy():
    code = "import sys, backend.protocol, backend.errors; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_job_spec_round_trip_with_explicit_cameras():
    spec = _spec(cameras=CamerasSpec(preset="tiny", cameras=[_camera("a"), _camera("b", key=False)]),
                 animation=AnimationSpec(num_frames=9, fps=30.0))
    again = JobSpec.loads(spec.dumps())
    assert again == spec
    assert again.num_frames == 9 and again.resolution == PRESETS["tiny"].resolution
    assert again.cameras.cameras[1].key is False


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d["cameras"].update(cameras=[]), "cameras.cameras"),
        (lambda d: d["cameras"].update(preset="huge"), "cameras.preset"),
        (lambda d: d["inputs"].update(reference_image="../outside.png"), "inputs.reference_image"),
        (lambda d: d["inputs"].update(reference_image="/etc/passwd"), "inputs.reference_image"),
        (lambda d: d["animation"].update(num_frames=10), "animation.num_frames"),
        (lambda d: d["animation"].update(fps=-1), "animation.fps"),
        (lambda d: d["generator"].update(name="magic"), "generator.name"),
        (lambda d: d.update(schema_version=99), "schema_version"),
        (lambda d: d.update(surprise=1), "job.json.surprise"),
        (lambda d: d["cameras"].update(cameras=[dict(_camera().__dict__, fx=0)]), "cameras.cameras[0].fx"),
        (lambda d: d["cameras"].update(cameras=[dict(_camera().__dict__, world_to_cam=[[1, 0, 0]])]),
         "cameras.cameras[0].world_to_cam"),
        (lambda d: d["cameras"].update(cameras=[_camera().__dict__, _camera().__dict__]), "cameras.cameras"),
    ],
)
def test_validation_names_the_bad_field(mutate, field):
    d = json.loads(_spec().dumps())
    mutate(d)
    with pytest.raises(MVP4DError) as ei:
        JobSpec.from_json(d)
    assert ei.value.code == "BAD_INPUT"
    assert field in ei.value.message
    assert "\n" not in ei.value.message and ei.value.hint


def test_invalid_json_text_is_bad_input():
    with pytest.raises(MVP4DError) as ei:
        JobSpec.loads("{not json")
    assert ei.value.code == "BAD_INPUT"


def test_resolve_job_path_refuses_symlink_escape(tmp_path):
    job = tmp_path / "job"
    (job / "inputs").mkdir(parents=True)
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    (job / "inputs" / "link.png").symlink_to(outside)
    assert resolve_job_path(job, "inputs/ok.png") == (job / "inputs" / "ok.png").resolve()
    with pytest.raises(MVP4DError, match="may not leave the job folder"):
        resolve_job_path(job, "inputs/link.png")


@pytest.mark.parametrize(
    "event",
    [
        Event("stage", stage="corpus", status="start"),
        Event("progress", stage="corpus", done=3, total=12, eta_s=4.5),
        Event("preview", path="outputs/corpus_preview.png"),
        Event("warning", message="found 2 faces; using the largest"),
        Event("error", code="NO_FACE", message="no face found", hint="use another photo"),
        Event("done", outputs={"corpus": "stages/corpus"}),
    ],
)
def test_event_round_trip(event):
    line = event.dumps()
    assert "\n" not in line
    assert Event.loads(line) == event


@pytest.mark.parametrize(
    "d",
    [
        {"type": "progress", "stage": "x", "done": 1},  # total missing
        {"type": "error", "code": "NOPE", "message": "m", "hint": "h"},  # unknown code
        {"type": "stage", "stage": "x", "status": "paused"},
        {"type": "teleport"},
    ],
)
def test_bad_events_are_rejected(d):
    with pytest.raises(MVP4DError):
        Event.from_json(d)


def test_error_codes_are_closed():
    with pytest.raises(ValueError):
        MVP4DError("SOMETHING_NEW", "x")


def test_generator_memory_and_device_fields():
    d = json.loads(_spec().dumps())
    d["generator"].update(vram="low", device="cuda:1", sampler="composed", vae_tiling=True)
    g = JobSpec.from_json(d).generator
    assert (g.vram, g.device, g.sampler, g.vae_tiling) == ("low", "cuda:1", "composed", True)
    for field, bad in (("device", "tpu"), ("vram", "huge"), ("sampler", "fast"), ("refine_strength", 2.0)):
        d2 = json.loads(_spec().dumps())
        d2["generator"][field] = bad
        with pytest.raises(MVP4DError, match=f"generator.{field}"):
            JobSpec.from_json(d2)


def test_the_addon_run_file_is_the_one_the_backend_accepts():
    """The add-on writes its run file into a track folder before the backend starts there."""
    from backend.protocol import ADDON_RUN_FILE
    from mvp4d_blender.io.jobs import PID_FILE

    assert PID_FILE == ADDON_RUN_FILE
