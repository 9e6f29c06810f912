"""``python -m backend corpus``/``run``/``demo`` end to end on the embedded default (toy head, astronaut)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from backend.protocol import PRESETS, Event, JobSpec

from .conftest import REPO, run_backend


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory, astronaut_png):
    out = tmp_path_factory.mktemp("tiny") / "job"
    t0 = time.time()
    code, events, err = run_backend("corpus", "--image", str(astronaut_png), "--out", str(out), "--preset", "tiny")
    seconds = time.time() - t0
    assert code == 0, err[-2000:]
    print(f"corpus --preset tiny took {seconds:.1f} s")
    return out, events


def test_tiny_corpus_writes_every_view_and_frame(tiny_job):
    out, events = tiny_job
    preset = PRESETS["tiny"]
    manifest = json.loads((out / "stages/corpus/corpus.json").read_text())
    assert len(manifest["views"]) == preset.num_views
    assert sum(v["key"] for v in manifest["views"]) == preset.num_key_views
    cams = json.loads((out / "stages/corpus/cameras.json").read_text())
    assert len(cams) == preset.num_views
    for v in manifest["views"]:
        frames = sorted((out / "stages/corpus" / v["dir"]).glob("*.png"))
        assert len(frames) == preset.num_frames
        img = np.asarray(Image.open(frames[0]))
        assert img.shape == (preset.resolution, preset.resolution, 3)
        assert (img < 250).any(axis=-1).mean() > 0.05  # the head is in the picture, not just white
    sheet = np.asarray(Image.open(out / "outputs/corpus_preview.png"))
    assert sheet.shape[0] > sheet.shape[1] / 2  # rows = views
    types = [e.type for e in events]
    assert types[-1] == "done" and "preview" in types and "error" not in types
    prog = [e for e in events if e.type == "progress" and e.stage == "corpus"]
    assert prog[-1].done == prog[-1].total == preset.num_views
    logged = [Event.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e.type for e in logged] == types


def test_animation_moves_the_head(tiny_job):
    out, _ = tiny_job
    view = json.loads((out / "stages/corpus/corpus.json").read_text())["views"][0]["dir"]
    frames = [np.asarray(Image.open(p), np.float32) for p in sorted((out / "stages/corpus" / view).glob("*.png"))]
    diffs = [np.abs(frames[i] - frames[0]).mean() for i in range(1, len(frames))]
    assert max(diffs) > 0.5  # the default animation visibly changes the frames


def test_run_resumes_finished_job_without_redoing(tiny_job):
    out, _ = tiny_job
    before = {p: p.stat().st_mtime_ns for p in (out / "stages/corpus/views").rglob("*.png")}
    code, events, err = run_backend("run", str(out), "--until", "corpus")
    assert code == 0, err
    assert [e.status for e in events if e.type == "stage"] == ["skip", "skip"]
    assert {p: p.stat().st_mtime_ns for p in (out / "stages/corpus/views").rglob("*.png")} == before


def test_sigterm_then_rerun_resumes_at_first_unfinished_view(tmp_path, astronaut_png):
    out = tmp_path / "job"
    args = [sys.executable, "-m", "backend", "corpus", "--image", str(astronaut_png), "--out", str(out),
            "--preset", "preview"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    done_views = 0
    for line in proc.stdout:  # wait until at least one view is finished, then stop the job
        ev = Event.loads(line)
        if ev.type == "progress" and ev.stage == "corpus" and ev.done >= 1:
            done_views = ev.done
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stdout.read()
    code = proc.wait(timeout=120)
    assert done_views >= 1
    assert code == 130, rest[-500:]
    last = Event.loads(rest.strip().splitlines()[-1])
    assert last.type == "error" and last.code == "CANCELLED"
    views = out / "stages/corpus/views"
    finished = {p.name: p.stat().st_mtime_ns for p in views.iterdir() if not p.name.startswith(".")}
    assert 1 <= len(finished) < PRESETS["preview"].num_views
    assert not list(views.glob(".*"))  # no half-written view folder
    assert not (out / "stages/corpus/done.json").exists()

    code, events, err = run_backend(*args[3:])
    assert code == 0, err[-2000:]
    assert any(e.type == "log" and "resuming" in (e.message or "") for e in events)
    first = next(e for e in events if e.type == "progress" and e.stage == "corpus")
    assert first.done == len(finished)
    now = {p.name: p.stat().st_mtime_ns for p in views.iterdir() if not p.name.startswith(".")}
    assert len(now) == PRESETS["preview"].num_views
    assert all(now[n] == t for n, t in finished.items())  # finished views were not redone
    assert not list(views.glob(".*"))


def test_demo_runs_the_whole_job(tmp_path):
    code, events, err = run_backend("demo", "--out", str(tmp_path / "demo"), "--preset", "tiny")
    assert code == 0, err[-2000:]
    out = tmp_path / "demo" / "outputs"
    assert (out / "corpus_preview.png").is_file() and events[-1].type == "done"
    assert JobSpec.load(tmp_path / "demo").inputs.flame_model == "toy"
    assert [e.stage for e in events if e.type == "stage" and e.status == "end"] == ["track", "corpus", "fit", "export"]
    for name in ("avatar.safetensors", "avatar.ply", "avatar_preview.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "frames").glob("*.ply"))) == PRESETS["tiny"].num_frames
    from backend.avatar.bundle import read_bundle

    bundle = read_bundle(out / "avatar.safetensors")
    assert bundle.num_frames == PRESETS["tiny"].num_frames and bundle.num_gaussians > 1000


def test_bad_fit_block_is_refused_before_work(tmp_path, astronaut_png):
    code, events, _ = run_backend("generate", "--image", str(astronaut_png), "--out", str(tmp_path / "job"),
                                  "--preset", "tiny", "--fit-iterations", "0")
    assert code != 0 and events[-1].code == "BAD_INPUT" and "iterations" in events[-1].message
    assert not (tmp_path / "job" / "job.json").exists()


def test_doctor_reports_environment():
    plain = subprocess.run([sys.executable, "-m", "backend", "doctor"], cwd=REPO, capture_output=True, text=True)
    assert plain.returncode == 0 and json.loads(plain.stdout)["flame"]["ok"] is True
    out = subprocess.run([sys.executable, "-m", "backend", "doctor", "--flame", "/nonexistent/flame.pkl"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    assert report["torch"]["device"] in ("cpu", "cuda")
    assert report["gsplat"]["path"] in ("cuda", "cpu-reference")
    assert report["packages"]["mediapipe"]["version"] == "0.10.14"
    assert report["flame"]["ok"] is False and report["flame"]["fix"]
    assert report["ok"] is False  # a missing FLAME file makes the installation not ok
    bad_weights = subprocess.run([sys.executable, "-m", "backend", "doctor", "--weights", "/nonexistent/mmvdm"],
                                 cwd=REPO, capture_output=True, text=True, check=True).stdout
    w = json.loads(bad_weights)["weights"]
    assert (w["ok"], w["code"]) == (False, "WEIGHTS_MISSING") and w["fix"]
