"""The Ray executor (backend/executors/ray_executor.py) on a 2-CPU local Ray cluster, on the tiny random
MMVDM and the toy head: bitwise the local executor's corpus, a killed worker costs only its unit, cancel
stops every worker within 5 s, and no Ray process outlives the module."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil  # accelerate's dependency
import pytest
import torch

ray = pytest.importorskip("ray", reason="the Ray executor needs the 'scale' extra (ray)")

from backend.errors import Cancelled, MVP4DError  # noqa: E402
from backend.events import CancelToken  # noqa: E402
from backend.executors import make_executor  # noqa: E402
from backend.generators.mmvdm import MMVDMGenerator, MMVDMSettings  # noqa: E402
from backend.protocol import ExecutorSpec  # noqa: E402

from .test_cap4d_step_resume import cap4d_setup, read_views, run_cap4d  # noqa: E402,F401
from .test_mmvdm_generator import _frames, _read_views, components, flame, scene  # noqa: E402,F401

#: an extension plan (w0-key, w0-c00, w1-key, w1-c00): w0-c00 and w1-key are independent
SETTINGS = dict(steps_key=3, steps_other=2, window_frames=9, context_frames=5, seed=5)
FRAMES = 13


def _ray_procs() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)  # ray.init's GCS, raylet and workers


@pytest.fixture(scope="module")
def cluster():
    """ONE local Ray instance for the module (Ray starts slowly on 2 shared cores), always stopped."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _system_config={"worker_register_timeout_seconds": 120})
    yield
    ray.shutdown()
    deadline = time.time() + 20
    while _ray_procs() and time.time() < deadline:
        time.sleep(0.2)
    left = [(p.pid, p.name()) for p in _ray_procs() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"Ray processes left after shutdown: {left}"


def _run(components, flame, scene, out: Path, executor=None, check=None, **over):  # noqa: F811
    params = _frames(scene.params, FRAMES)
    with torch.no_grad():
        verts = flame(params).vertices
    gen = MMVDMGenerator(settings=MMVDMSettings(**{**SETTINGS, **over}), components=components)
    logs, seen = [], []
    gen.generate(scene.ring, verts, flame, params, scene.ref_params, scene.ref_cam, scene.ref_image, out / "views",
                 out / "state", progress=lambda d, t: seen.append((d, t)), check=check, log=logs.append,
                 executor=executor)
    return logs, seen


def _latents(state: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {p.name: load_file(str(p))["latents"] for p in sorted(state.glob("*.safetensors"))}


def _sampled(logs: list[str]) -> list[str]:
    return sorted(m.split(" pass ")[1].split()[0] for m in logs if " took " in m)


@pytest.fixture(scope="module")
def local_result(components, flame, scene, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("local")
    _run(components, flame, scene, out)
    return _read_views(out / "views"), _latents(out / "state")


def _executor(out: Path, **spec) -> object:
    return make_executor(ExecutorSpec(name="ray", **spec), cancel_file=out / "cancel")


def test_ray_corpus_is_bitwise_the_local_one(cluster, components, flame, scene, local_result, tmp_path):  # noqa: F811
    views, latents = local_result
    ex = _executor(tmp_path)
    logs, seen = _run(components, flame, scene, tmp_path, executor=ex)
    assert _sampled(logs) == ["w0-c00", "w0-key", "w1-c00", "w1-key"]  # workers' log lines reach the driver
    assert seen[-1][0] == seen[-1][1] == 3 + 2 + 3 + 2 and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert len(set(ex.last_pids.values())) == 2  # both workers of the cluster ran units
    got = _read_views(tmp_path / "views")
    assert sorted(got) == sorted(views) and all(np.array_equal(views[k], got[k]) for k in views)
    got_lat = _latents(tmp_path / "state")
    assert sorted(got_lat) == sorted(latents) and all(torch.equal(latents[k], got_lat[k]) for k in latents)


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e
        box["t_end"] = time.time()

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def test_killed_worker_costs_only_its_unit(cluster, components, flame, scene, local_result, tmp_path):  # noqa: F811
    views, _ = local_result
    ex = _executor(tmp_path, retries=0)
    slow = dict(steps_other=40)  # the cluster passes run long enough to be killed mid-unit
    t, box = _in_thread(lambda: _run(components, flame, scene, tmp_path, executor=ex, **slow))
    victim = None
    deadline = time.time() + 120
    while victim is None and time.time() < deadline and t.is_alive():
        pid = ex.last_pids.get("w0-c00")
        if pid is not None and not (tmp_path / "state" / "w0-c00.safetensors").exists():
            victim = pid
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    t.join(120)
    assert victim is not None, "w0-c00 never started"
    assert isinstance(box.get("error"), MVP4DError) and box["error"].code == "WORKER_LOST", box
    state = tmp_path / "state"
    assert (state / "w0-key.safetensors").is_file() and not (state / "w0-c00.safetensors").exists()
    before = {p.name for p in state.glob("*.safetensors")}
    logs, _ = _run(components, flame, scene, tmp_path, executor=_executor(tmp_path, retries=0), **slow)
    redone = _sampled(logs)
    assert "w0-c00" in redone and not any(f"{u}.safetensors" in before for u in redone)  # only the lost units
    ref_logs, _ = _run(components, flame, scene, tmp_path / "ref", **slow)  # the local executor, same settings
    ref, got = _read_views(tmp_path / "ref" / "views"), _read_views(tmp_path / "views")
    assert sorted(got) == sorted(ref) and all(np.array_equal(ref[k], got[k]) for k in ref)


def _busy_workers() -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any("mmvdm_unit_task" in (c or "") for c in (p.info["cmdline"] or []))]


def test_cancel_stops_every_worker_within_5_s(cluster, components, flame, scene, tmp_path):  # noqa: F811
    ex = _executor(tmp_path)
    token = CancelToken(tmp_path / "cancel")
    slow = dict(steps_key=200, steps_other=200)
    t, box = _in_thread(lambda: _run(components, flame, scene, tmp_path, executor=ex, check=token.check, **slow))
    deadline = time.time() + 120
    while "w0-key" not in ex.last_pids and time.time() < deadline and t.is_alive():
        time.sleep(0.05)
    assert "w0-key" in ex.last_pids
    time.sleep(0.5)
    assert _busy_workers(), "a worker runs the key pass (Ray titles it ray::mmvdm_unit_task)"
    t0 = time.time()
    (tmp_path / "cancel").write_text("")
    t.join(30)
    assert isinstance(box.get("error"), Cancelled), box
    assert box["t_end"] - t0 < 5.0
    while _busy_workers() and time.time() - t0 < 5.0:
        time.sleep(0.1)
    assert not _busy_workers() and time.time() - t0 < 5.0
    assert not (tmp_path / "state" / "w0-key.safetensors").exists()


def test_fit_as_a_ray_unit_of_its_own_is_the_local_fit(cluster, tmp_path):
    """The fit stage's unit (backend/avatar/stage.py `_fit` with executor.fit_gpus) through run_call on a
    worker gives the local fit bit for bit, its progress reaching the driver; a GPU ask the cluster
    cannot meet is refused at once instead of waiting forever."""
    import json

    from backend.avatar.fit import fit_avatar
    from backend.avatar.settings import preset_settings
    from backend.flame import Flame, load_flame
    from backend.jobs import create_job, run_job
    from backend.events import EventSink
    from backend.protocol import CamerasSpec, InputsSpec, JobSpec
    from backend.tracking import load_track
    from backend.tracking.image import default_reference_image, save_png_atomic

    image = tmp_path / "astronaut.png"
    save_png_atomic(image, default_reference_image())
    job = tmp_path / "job"
    create_job(job, image, JobSpec(inputs=InputsSpec(reference_image=""), cameras=CamerasSpec(preset="tiny"),
                                   fit={"iterations": 6, "use_sfm": False}))
    assert run_job(job, until="corpus", sink=EventSink(job / "events.jsonl", stream=None)) == 0
    flame_ = Flame(load_flame("toy"))
    shape = load_track(job / "stages" / "track", flame_source=flame_).params.shape
    s = preset_settings("tiny").replace(iterations=6, use_sfm=False, log_every=1, checkpoint_every=3,
                                         train_frames="even", device="cpu")
    corpus = job / "stages" / "corpus"
    local = fit_avatar(corpus, flame_, shape, s)
    ex = _executor(tmp_path)
    seen, logs = [], []
    remote = ex.run_call(fit_avatar, (corpus, flame_, shape, s), {"checkpoint_dir": tmp_path / "fit"}, unit="fit",
                         gpus=0, progress=lambda d, t: seen.append((d, t)), check=None, log=logs.append)
    assert ex.last_pids["fit"] != os.getpid() and (tmp_path / "fit").is_dir()
    assert remote.iterations == local.iterations and torch.equal(remote.vertices, local.vertices)
    assert sorted(remote.tensors) == sorted(local.tensors)
    assert all(torch.equal(remote.tensors[k], local.tensors[k]) for k in local.tensors), "worker fit != local fit"
    assert seen and seen[-1][0] <= seen[-1][1]
    with pytest.raises(MVP4DError) as e:
        ex.run_call(fit_avatar, (corpus, flame_, shape, s), {}, unit="fit", gpus=1, progress=None, check=None,
                    log=logs.append)
    assert e.value.code == "EXECUTOR_UNAVAILABLE"
    # the fit stage: a GPU the cluster lacks is a typed error event; --fit-device runs it here on that device
    events = job / "events.jsonl"
    sink = EventSink(events, stream=None)
    assert run_job(job, until="fit", sink=sink, executor=ExecutorSpec(name="ray", fit_gpus=1)) == 1
    assert json.loads(events.read_text().splitlines()[-1])["code"] == "EXECUTOR_UNAVAILABLE"
    assert run_job(job, until="fit", sink=sink, executor=ExecutorSpec(fit_device="cpu")) == 0


def test_cap4d_groups_on_ray_are_bitwise_the_local_ones(cluster, cap4d_setup, tmp_path):  # noqa: F811
    """The tiny CAP4D plan (4 views x 3 frames: two groups per step) with every group a Ray task."""
    run_cap4d(cap4d_setup, tmp_path / "local")
    logs: list[str] = []
    ex = _executor(tmp_path / "ray")
    run_cap4d(cap4d_setup, tmp_path / "ray", executor=ex, logs=logs)
    assert len(ex.last_pids) == 2 * 2 and os.getpid() not in ex.last_pids.values()  # 2 steps x 2 group tasks
    assert read_views(tmp_path / "ray") == read_views(tmp_path / "local")


def test_a_job_run_with_the_ray_executor_matches_the_local_run(cluster, tmp_path):
    """The whole corpus stage through run_job: job.json's generator (tiny random MMVDM weights from
    `weights init`), `run --executor ray` as an override for one run, events from the workers."""
    import json
    import shutil

    from backend.events import EventSink
    from backend.jobs import create_job, run_job
    from backend.mmvdm.weights import init_random_mmvdm
    from backend.protocol import CamerasSpec, GeneratorSpec, InputsSpec, JobSpec
    from backend.tracking.image import default_reference_image, save_png_atomic

    init_random_mmvdm(tmp_path / "weights", "tiny")
    image = tmp_path / "astronaut.png"
    save_png_atomic(image, default_reference_image())
    spec = JobSpec(inputs=InputsSpec(reference_image=""), cameras=CamerasSpec(preset="tiny"),
                   generator=GeneratorSpec(name="mmvdm", weights=str(tmp_path / "weights"), steps_key=3, steps_other=2))
    create_job(tmp_path / "local", image, spec)
    assert run_job(tmp_path / "local", until="track", sink=EventSink(None, stream=None)) == 0
    shutil.copytree(tmp_path / "local", tmp_path / "ray", symlinks=True)
    assert run_job(tmp_path / "local", until="corpus", sink=EventSink(None, stream=None)) == 0
    sink = EventSink(tmp_path / "ray" / "events.jsonl", stream=None)
    assert run_job(tmp_path / "ray", until="corpus", sink=sink, executor=ExecutorSpec(name="ray")) == 0
    views = lambda job: {p.relative_to(job).as_posix(): p.read_bytes()  # noqa: E731
                         for p in sorted((job / "stages" / "corpus" / "views").rglob("*.png"))}
    assert views(tmp_path / "ray") == views(tmp_path / "local") and len(views(tmp_path / "local")) == 6 * 5
    events = [json.loads(line) for line in (tmp_path / "ray" / "events.jsonl").read_text().splitlines()]
    assert any("pass w0-c00" in (e.get("message") or "") for e in events)  # a worker's log line, via the driver
    assert JobSpec.load(tmp_path / "ray").executor == ExecutorSpec()  # the override was for that run only
