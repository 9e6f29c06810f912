"""The avatar fit on a real (tiny) corpus: quality on held-out cameras and frames, checkpoints and
resume, divergence, bad corpora, and the fit/export stages."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from backend.avatar import fit as fit_mod
from backend.avatar.checkpoint import load_checkpoint
from backend.avatar.data import load_corpus
from backend.avatar.evaluate import heldout_cameras, heldout_psnr, projection_ground_truth
from backend.avatar.fit import fit_avatar
from backend.avatar.settings import preset_settings
from backend.errors import Cancelled, MVP4DError
from backend.events import EventSink
from backend.flame import Flame, load_flame
from backend.jobs import Stage, create_job, run_job
from backend.protocol import CamerasSpec, Event, InputsSpec, JobSpec
from backend.tracking import load_track
from backend.tracking.image import default_reference_image, save_png_atomic

TINY_PSNR_BAR = 22.0  # held-out cameras and frames, tiny preset (the preview preset is held to 24 dB)


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("avatar")
    image = root / "astronaut.png"
    save_png_atomic(image, default_reference_image())
    job = root / "job"
    create_job(job, image, JobSpec(inputs=InputsSpec(reference_image=""), cameras=CamerasSpec(preset="tiny")))
    assert run_job(job, until="corpus", sink=EventSink(job / "events.jsonl", stream=None)) == 0
    return job


@pytest.fixture(scope="module")
def flame():
    return Flame(load_flame("toy"))


def _shape(job, flame):
    return load_track(job / "stages" / "track", flame_source=flame).params.shape


def _quick(**kw):
    base = dict(iterations=12, use_sfm=False, log_every=1, checkpoint_every=5, train_frames="even",
                densify={"refine_start": 3, "refine_stop": 11, "refine_every": 3, "reset_every": 0})
    base.update(kw)
    return preset_settings("tiny").replace(**base)


def test_tiny_fit_reaches_quality_on_heldout_cameras_and_frames(tiny_job, flame):
    s = preset_settings("tiny").replace(train_frames="even")  # odd frames held out
    logs = []
    res = fit_avatar(tiny_job / "stages" / "corpus", flame, _shape(tiny_job, flame), s, log=logs.append)
    assert any(line.startswith("iter ") and " loss " in line and " psnr " in line for line in logs)
    assert any("culled" in line for line in logs)
    cams = heldout_cameras(res.cameras, 4)
    ring_dirs = [c.forward for c in res.cameras]
    for c in cams:  # really not ring cameras
        assert min(np.degrees(np.arccos(np.clip(c.forward @ d, -1, 1))) for d in ring_dirs) > 5.0
    frames = list(range(1, res.vertices.shape[0], 2))
    truth = projection_ground_truth(tiny_job / "stages" / "track", flame, res.vertices, cams, frames)
    ev = heldout_psnr(res, cams, frames, truth)
    print(f"tiny preset: held-out PSNR {ev['psnr']:.2f} dB (head region {ev['psnr_head']:.2f} dB, worst image "
          f"{ev['min_image_psnr']:.2f} dB) over {ev['images']} images; {res.num_gaussians} Gaussians, "
          f"{res.stats['seconds']:.1f} s")
    assert ev["psnr"] >= TINY_PSNR_BAR
    assert res.detail_offsets.shape == (res.vertices.shape[0], res.num_gaussians, 3)
    assert torch.isfinite(res.detail_offsets).all()


def test_resume_continues_exactly_like_an_uninterrupted_run(tiny_job, flame, tmp_path):
    corpus, shape = tiny_job / "stages" / "corpus", _shape(tiny_job, flame)
    straight: dict[int, float] = {}
    whole = fit_avatar(corpus, flame, shape, _quick(), on_step=lambda i, m, f: straight.setdefault(i, m["loss"]))

    calls = {"n": 0}

    def stop_at_7():
        calls["n"] += 1
        if calls["n"] == 8:  # before the 8th iteration
            raise Cancelled("test stop")

    with pytest.raises(Cancelled):
        fit_avatar(corpus, flame, shape, _quick(), check=stop_at_7, checkpoint_dir=tmp_path)
    info = json.loads((tmp_path / "fit.json").read_text())
    assert info["iteration"] == 7
    resumed: dict[int, float] = {}
    res = fit_avatar(corpus, flame, shape, _quick(), checkpoint_dir=tmp_path,
                     on_step=lambda i, m, f: resumed.setdefault(i, m["loss"]))
    assert sorted(resumed) == list(range(8, 13))
    for i in resumed:
        assert resumed[i] == straight[i], i  # bit for bit: every tensor and the RNG are restored
    assert res.iterations == 12
    assert res.stats["train_psnr"] == whole.stats["train_psnr"]  # the reported mean spans the stop too
    assert json.loads((tmp_path / "fit.json").read_text())["iteration"] == 12


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tiny_job, flame, tmp_path, monkeypatch):
    real = fit_mod.losses.photometric_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] == 8 else out

    monkeypatch.setattr(fit_mod.losses, "photometric_loss", poisoned)
    with pytest.raises(MVP4DError) as ei:
        fit_avatar(tiny_job / "stages" / "corpus", flame, _shape(tiny_job, flame), _quick(), checkpoint_dir=tmp_path)
    e = ei.value
    assert e.code == "INTERNAL"
    assert "NaN" in e.message and "iteration 7" in e.message and "checkpoint (iteration 5)" in e.message
    assert "lr_scale" in e.hint
    tensors, info = load_checkpoint(tmp_path)
    assert info["iteration"] == 5 and json.loads((tmp_path / "fit.json").read_text())["iteration"] == 5
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


def _copy_corpus(job, tmp_path):
    dst = tmp_path / "corpus"
    shutil.copytree(job / "stages" / "corpus", dst)
    return dst


def test_missing_frame_is_bad_input_naming_view_and_frame(tiny_job, flame, tmp_path):
    corpus = _copy_corpus(tiny_job, tmp_path)
    (corpus / "views" / "view02" / "0003.png").unlink()
    with pytest.raises(MVP4DError) as ei:
        load_corpus(corpus, flame)
    assert ei.value.code == "BAD_INPUT"
    assert "'view02'" in ei.value.message and "frame 3" in ei.value.message
    shutil.rmtree(corpus / "views" / "key01")
    with pytest.raises(MVP4DError, match="missing view 'key01'"):
        load_corpus(corpus, flame)


def test_camera_that_sees_nothing_is_bad_input(tiny_job, flame, tmp_path):
    corpus = _copy_corpus(tiny_job, tmp_path)
    cams = json.loads((corpus / "cameras.json").read_text())
    m = np.array(cams[3]["world_to_cam"])
    m[:3, :3] = np.diag([-1.0, 1.0, -1.0]) @ m[:3, :3]  # turn it around: it now looks away from the head
    m[:3, 3] = np.diag([-1.0, 1.0, -1.0]) @ m[:3, 3]
    cams[3]["world_to_cam"] = m.tolist()
    (corpus / "cameras.json").write_text(json.dumps(cams))
    with pytest.raises(MVP4DError) as ei:
        fit_avatar(corpus, flame, None, _quick(iterations=1))
    assert ei.value.code == "BAD_INPUT" and f"{cams[3]['name']!r}" in ei.value.message
    assert "sees nothing of the head" in ei.value.message


def test_fit_and_export_stages_write_bundle_plys_and_preview(tiny_job, flame, monkeypatch):
    from backend.avatar import fit_export_stages as stage_mod
    from backend.avatar.bundle import read_bundle
    from backend.avatar.fit_export_stages import run_export, run_fit

    threads_seen: list[int] = []
    render = stage_mod.render_bundle

    def spy(*a, **k):  # the preview renders run with the fit settings' thread count (1 on CPU presets)
        threads_seen.append(torch.get_num_threads())
        return render(*a, **k)

    monkeypatch.setattr(stage_mod, "render_bundle", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)

    job = tiny_job.parent / "job_stages"
    shutil.copytree(tiny_job, job)
    spec = json.loads((job / "job.json").read_text())
    spec["fit"] = {"iterations": 20, "use_sfm": False, "densify": {"refine_start": 1000}}
    (job / "job.json").write_text(json.dumps(spec))
    sink = EventSink(job / "events.jsonl", stream=None)
    stages = [Stage("track", lambda c: {}), Stage("corpus", lambda c: {}), Stage("fit", run_fit),
              Stage("export", run_export)]
    try:
        assert run_job(job, stages=stages, sink=sink) == 0
        assert threads_seen and set(threads_seen) == {1} and torch.get_num_threads() == 2  # and restored
    finally:
        torch.set_num_threads(before)
    b = read_bundle(job / "outputs" / "avatar.safetensors")
    assert b.num_frames == 5 and b.detail_offsets is not None and b.num_gaussians > 1000
    assert b.metadata["flame_model_id"] == flame.model_id and len(b.metadata["camera_ring"]) == 6
    assert b.metadata["settings"]["iterations"] == 20 and b.metadata["generator"]["name"] == "projection"
    out = job / "outputs"
    assert (out / "avatar.ply").stat().st_size > 0 and (out / "avatar_animated.ply").stat().st_size > 0
    assert sorted(p.name for p in (out / "frames").glob("*.ply")) == [f"{t:04d}.ply" for t in range(5)]
    assert (job / "stages" / "fit" / "fit.safetensors").is_file()
    events = [Event.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]
    assert any(e.type == "preview" and e.path == "outputs/avatar_preview.png" for e in events)
    assert any(e.type == "progress" and e.stage == "fit" and e.done == 20 for e in events)
    assert any(e.type == "log" and e.stage == "fit" and (e.message or "").startswith("iter ") for e in events)
    from PIL import Image

    assert Image.open(out / "avatar_preview.png").size[0] > 100


def test_bundle_renders_like_the_fit(tiny_job, flame):
    from backend.avatar.losses import psnr
    from backend.avatar.fit_export_stages import bundle_from_result, render_bundle

    res = fit_avatar(tiny_job / "stages" / "corpus", flame, _shape(tiny_job, flame), _quick(iterations=30))
    assert float(res.detail_offsets.abs().max()) > 0  # the U-Net moved something
    meta = {"fps": 24.0, "num_frames": 5, "flame_model_id": "toy", "camera_ring": [], "generator": {}, "settings": {}}
    bundle = bundle_from_result(res, meta)
    for cam, t in [(res.cameras[0], 0), (res.cameras[3], 4)]:
        ours = res.render(cam, t)
        theirs = torch.from_numpy(render_bundle(bundle, cam, t)).float() / 255.0
        assert psnr(ours, theirs) > 40.0  # float16 vertices/offsets and 8-bit output only


def test_bench_reports_speed_and_quality(tiny_job):
    from backend.avatar.bench import run_bench

    r = run_bench("tiny", iterations=20, job_dir=tiny_job, eval_every=10)
    assert r["iterations"] == 20 and r["iterations_per_second"] > 0 and r["peak_memory_mb"] > 0
    assert [c["iteration"] for c in r["curve"]] == [10, 20] and r["final_psnr"] > 15.0
    assert set(r) >= {"seconds_to_bar", "psnr_bar", "fit_seconds", "device", "num_gaussians"}
