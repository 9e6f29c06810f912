"""Generate Avatar through the operator: the real backend on the embedded default, and every bad input."""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
import time
from importlib import import_module
from pathlib import Path

import bpy
import numpy as np
import pytest

from .conftest import ADDON, BACKEND_PYTHON, prefs

FAKE = Path(__file__).with_name("fake_backend.py")


@pytest.fixture
def fake_backend(tmp_path, monkeypatch):
    """Point the preferences at a misbehaving backend; returns a function setting its mode."""
    script = tmp_path / "fake-python"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    prefs().python_path = str(script)

    def mode(m: str) -> None:
        monkeypatch.setenv("MVP4D_FAKE_MODE", m)

    mode("done")
    yield mode
    prefs().python_path = str(BACKEND_PYTHON)


def _ready_scene(astronaut):
    bpy.ops.mvp4d.add_rig(source="TOY")
    scene = bpy.context.scene
    scene.mvp4d.image = bpy.data.images.load(str(astronaut))
    return scene


def _snapshot():
    return {k: len(getattr(bpy.data, k)) for k in ("objects", "meshes", "collections", "cameras", "node_groups")}


# ---- the real backend ---------------------------------------------------------------------------


def test_generate_runs_the_backend_to_the_corpus(corpus_job):
    proto = import_module(f"{ADDON}.backend_link").protocol()
    spec = proto.JobSpec.load(corpus_job)
    assert spec.cameras.preset == "tiny" and spec.generator.name == "projection"
    assert spec.inputs.flame_model == "toy" and spec.cameras.cameras is None
    assert (corpus_job / spec.inputs.reference_image).is_file()
    events = [proto.Event.loads(line) for line in (corpus_job / "events.jsonl").read_text().splitlines()]
    assert [e.stage for e in events if e.type == "stage" and e.status == "end"] == ["track", "corpus"]
    assert events[-1].type == "done"
    assert len(list((corpus_job / "stages" / "corpus" / "views").iterdir())) == 6
    m = json.loads((corpus_job / "scene_status.json").read_text())  # the panel's state right after the run
    assert m["status"] == "FINISHED" and m["progress"] == pytest.approx(1.0) and not m["last_error"]
    assert m["preview_path"].endswith("corpus_preview.png") and m["stage"] == "corpus"
    assert not (corpus_job / "blender_backend.json").exists()


def test_job_folder_from_the_scene(scene, astronaut, fake_backend, tmp_path):
    """Explicit ring (FLAME space), rig keyframes as the animation npz, all via job.json."""
    _ready_scene(astronaut)
    bpy.ops.mvp4d.add_camera_ring(preset="tiny", distance=1.0)
    rig = scene.mvp4d.rig
    rig_params = import_module(f"{ADDON}.blender.rig_params")
    T = 6
    rig_params.keyframe_sequence(rig, {"expr": np.linspace(0, 1, T)[:, None] * np.eye(12)[1], "jaw_pose": np.zeros((T, 3))}, 3)
    scene.mvp4d.animation_source, scene.mvp4d.frame_start, scene.mvp4d.frame_end = "RIG", 3, 8
    job = tmp_path / "job"
    assert bpy.ops.mvp4d.generate_avatar(output_dir=str(job), wait=True) == {"FINISHED"}
    spec = json.loads((job / "job.json").read_text())
    assert len(spec["cameras"]["cameras"]) == 6 and sum(c["key"] for c in spec["cameras"]["cameras"]) == 2
    assert spec["animation"]["source"] == "inputs/animation.npz"
    assert spec["animation"]["num_frames"] == 5  # 6 keyed frames -> the nearest valid length (1 + 4k)
    with np.load(job / "inputs" / "animation.npz") as z:
        assert z["expr"].shape == (5, 12)
        np.testing.assert_allclose(z["expr"][:, 1], np.linspace(0, 1, T)[:5], atol=1e-6)
    assert scene.mvp4d.status == "FINISHED"
    # the artist is told, in the Generate panel, that the 6 keyed frames went out as 5
    assert "rig's 6 frames (3-8) were sent as 5" in scene.mvp4d.warnings
    assert "frame 8 is left out" in scene.mvp4d.warnings


# ---- bad input: a clear message, Blender keeps running, nothing half-built ------------------------


@pytest.mark.parametrize("case", ["no_image", "unreadable_image", "missing_image", "no_rig", "empty_cameras",
                                  "mmvdm_without_weights"])
def test_bad_input_is_refused_before_anything_runs(scene, astronaut, tmp_path, case):
    _ready_scene(astronaut)
    kw = {"output_dir": str(tmp_path / "job"), "wait": True}
    expect = {"no_image": "no reference image", "unreadable_image": "cannot read the reference image",
              "missing_image": "does not exist", "no_rig": "no FLAME rig", "empty_cameras": "holds no cameras",
              "mmvdm_without_weights": "needs its weights"}[case]
    if case == "no_image":
        scene.mvp4d.image = None
    elif case == "unreadable_image":
        bad = tmp_path / "broken.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
        kw["image"] = str(bad)
    elif case == "missing_image":
        kw["image"] = str(tmp_path / "nope.jpg")
    elif case == "no_rig":
        scene.mvp4d.rig = None
    elif case == "empty_cameras":
        coll = bpy.data.collections.new("Empty ring")
        scene.collection.children.link(coll)
        kw["cameras"] = coll.name
    elif case == "mmvdm_without_weights":
        kw["generator"] = "mmvdm"
    before = _snapshot()
    with pytest.raises(RuntimeError, match=expect):
        bpy.ops.mvp4d.generate_avatar(**kw)
    assert _snapshot() == before
    assert not (tmp_path / "job").exists()
    assert scene.mvp4d.status == "FAILED" and expect in scene.mvp4d.last_error and scene.mvp4d.last_hint


def test_backend_interpreter_missing(scene, astronaut, tmp_path):
    _ready_scene(astronaut)
    prefs().python_path = str(tmp_path / "no-such-python")
    try:
        with pytest.raises(RuntimeError, match="does not exist or cannot run"):
            bpy.ops.mvp4d.generate_avatar(output_dir=str(tmp_path / "job"), wait=True)
    finally:
        prefs().python_path = str(BACKEND_PYTHON)
    assert "BACKEND_MISSING" in scene.mvp4d.last_error and "preferences" in scene.mvp4d.last_hint.lower()


@pytest.mark.parametrize("mode,code,text", [
    ("crash", "BACKEND_CRASHED", "Segmentation fault"),
    ("error", "NO_FACE", "no face found"),
])
def test_backend_failure_mid_job(scene, astronaut, fake_backend, tmp_path, mode, code, text):
    _ready_scene(astronaut)
    fake_backend(mode)
    before = _snapshot()
    with pytest.raises(RuntimeError, match=text):
        bpy.ops.mvp4d.generate_avatar(output_dir=str(tmp_path / "job"), wait=True)
    m = scene.mvp4d
    assert m.status == "FAILED" and code in m.last_error and m.last_hint
    assert _snapshot() == before


def test_hung_backend_is_stopped(scene, astronaut, fake_backend, tmp_path):
    _ready_scene(astronaut)
    fake_backend("hang")
    prefs().hang_timeout_s = 10
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="reported nothing"):
        bpy.ops.mvp4d.generate_avatar(output_dir=str(tmp_path / "job"), wait=True)
    assert time.monotonic() - t0 < 30 and "BACKEND_HUNG" in scene.mvp4d.last_error


def test_cancel_stops_the_backend(scene, astronaut, fake_backend, tmp_path):
    _ready_scene(astronaut)
    fake_backend("slow")
    runtime = import_module(f"{ADDON}.blender.runtime")
    threading.Timer(1.0, lambda: [j.process.cancel() for j in list(runtime._jobs.values())]).start()
    t0 = time.monotonic()
    assert bpy.ops.mvp4d.generate_avatar(output_dir=str(tmp_path / "job"), wait=True) == {"CANCELLED"}
    assert time.monotonic() - t0 < 20
    m = scene.mvp4d
    assert m.status == "CANCELLED" and "CANCELLED" in m.last_error
    assert (tmp_path / "job" / "cancel").is_file()
    assert bpy.ops.mvp4d.resume_job.poll()


def test_reopening_reattaches_to_a_running_job(scene, astronaut, fake_backend, tmp_path):
    _ready_scene(astronaut)
    fake_backend("finish_later")
    runtime = import_module(f"{ADDON}.blender.runtime")
    jobs = import_module(f"{ADDON}.io.jobs")
    link = import_module(f"{ADDON}.backend_link")
    job_dir = tmp_path / "job"
    proc = jobs.BackendProcess(prefs().python_path, ["run", str(job_dir)], workdir=job_dir,
                               backend_root=link.backend_root(), proto=link.protocol()).start()
    m = scene.mvp4d
    m.job_dir, m.job_kind, m.status = str(job_dir), "generate", "RUNNING"
    blend = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.wm.open_mainfile(filepath=str(blend))  # load_post re-attaches
    job = runtime.running(str(job_dir))
    assert job is not None and job.process.proc is None  # followed through events.jsonl, not a pipe
    level, _msg = runtime.wait(job)
    assert bpy.context.scene.mvp4d.status == "FINISHED", bpy.context.scene.mvp4d.last_error
    proc.proc.wait(timeout=10)


def test_reopening_marks_a_dead_job_interrupted(scene, astronaut, tmp_path):
    _ready_scene(astronaut)
    m = scene.mvp4d
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job.json").write_text("{}")
    m.job_dir, m.job_kind, m.status = str(tmp_path / "job"), "generate", "RUNNING"
    blend = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    m = bpy.context.scene.mvp4d
    assert m.status == "INTERRUPTED" and "Resume" in m.last_hint
    assert bpy.ops.mvp4d.resume_job.poll()


def test_quitting_ends_the_backend(scene, astronaut, fake_backend, tmp_path):
    _ready_scene(astronaut)
    fake_backend("slow")
    runtime = import_module(f"{ADDON}.blender.runtime")
    jobs = import_module(f"{ADDON}.io.jobs")
    link = import_module(f"{ADDON}.backend_link")
    proc = jobs.BackendProcess(prefs().python_path, ["run", str(tmp_path / "job")], workdir=tmp_path / "job",
                               backend_root=link.backend_root(), proto=link.protocol()).start()
    runtime.start(proc, "generate", scene, None)
    time.sleep(0.5)
    runtime.shutdown()  # what atexit runs when Blender quits
    assert proc.proc.poll() is not None
    assert not runtime.any_running()


def test_rig_animation_is_sent_at_the_nearest_valid_length(scene):
    jobspec = import_module(f"{ADDON}.blender.jobspec")
    assert [jobspec.nearest_valid_frames(n) for n in (1, 2, 3, 4, 5, 10, 11, 12, 89)] == [1, 1, 5, 5, 5, 9, 13, 13, 89]
    bpy.ops.mvp4d.add_rig(source="TOY")
    rig = scene.mvp4d.rig
    for end, expect in ((10, 9), (12, 13)):
        spec, anim, _ = jobspec.build_spec(scene, rig, None, generator="projection", preset="tiny", seed=0,
                                           animation="RIG", frame_start=1, frame_end=end)
        assert spec["animation"]["num_frames"] == expect and anim["expr"].shape[0] == expect
    assert jobspec.length_warning(1, 9) is None  # already 1 + 4k: nothing to say
    assert "sent as 9" in jobspec.length_warning(1, 10) and "frame 10 is left out" in jobspec.length_warning(1, 10)
    assert "frame 13 is read from the rig" in jobspec.length_warning(1, 12)


def test_backend_warnings_reach_the_generate_panel(scene, astronaut, fake_backend, tmp_path):
    _ready_scene(astronaut)
    fake_backend("warn")
    assert bpy.ops.mvp4d.generate_avatar(output_dir=str(tmp_path / "job"), wait=True) == {"FINISHED"}
    assert "using its first frames" in scene.mvp4d.warnings
    drawn = []

    class _Layout:
        def __getattr__(self, name):
            return lambda *a, **k: _Layout()

        def label(self, text="", **_k):
            drawn.append(text)

    panel = next(c for c in bpy.types.Panel.__subclasses__() if c.__name__ == "MVP4D_PT_generate")
    panel.draw(type("P", (), {"layout": _Layout()})(), bpy.context)
    assert any("using its first frames" in t for t in drawn)
