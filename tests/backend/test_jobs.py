"""The staged runner: finished stages are skipped, errors and cancels become events, writes are atomic."""

from __future__ import annotations

import json

import pytest

from backend.errors import EXIT_CANCELLED, MVP4DError
from backend.events import CancelToken, EventSink
from backend.fsutil import atomic_dir, atomic_path, remove_partials
from backend.jobs import Stage, create_job, run_job, stage_done
from backend.protocol import Event, InputsSpec, JobSpec


def _events(job):
    return [Event.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]


def test_create_job_writes_spec_and_copies_inputs(job, tmp_path):
    spec = JobSpec.load(job)
    assert spec.inputs.reference_image == "inputs/reference.png"
    assert (job / spec.inputs.reference_image).read_bytes() == b"\x89PNG fake"
    # the same job again is reused; a different one is refused
    assert create_job(job, tmp_path / "face.png", JobSpec(inputs=InputsSpec(reference_image=""))) == spec
    other = JobSpec(inputs=InputsSpec(reference_image=""))
    other.cameras.preset = "tiny"
    with pytest.raises(MVP4DError, match="different job"):
        create_job(job, tmp_path / "face.png", other)


def test_create_job_refuses_missing_image(tmp_path):
    with pytest.raises(MVP4DError) as ei:
        create_job(tmp_path / "j", tmp_path / "missing.png")
    assert ei.value.code == "BAD_INPUT"
    assert not (tmp_path / "j" / "job.json").exists()


def test_finished_stages_are_skipped_on_resume(job):
    calls = []

    def make(name):
        def run(ctx):
            calls.append(name)
            (ctx.stage_dir / "out.txt").write_text(name)
            ctx.progress(1, 1)
            return {name: f"stages/{name}/out.txt"}

        return Stage(name, run)

    stages = [make("a"), make("b")]
    assert run_job(job, stages=stages, sink=EventSink(job / "events.jsonl", stream=None)) == 0
    assert calls == ["a", "b"] and stage_done(job, "a") and stage_done(job, "b")
    assert run_job(job, stages=stages, sink=EventSink(job / "events.jsonl", stream=None)) == 0
    assert calls == ["a", "b"]  # nothing redone
    ev = _events(job)
    assert [e.status for e in ev if e.type == "stage"][-2:] == ["skip", "skip"]
    assert ev[-1].type == "done" and ev[-1].outputs == {"a": "stages/a/out.txt", "b": "stages/b/out.txt"}


def test_error_in_stage_becomes_event_and_stage_stays_unfinished(job):
    def boom(ctx):
        raise MVP4DError("NO_FACE", "no face found in inputs/reference.png")

    code = run_job(job, stages=[Stage("track", boom)], sink=EventSink(job / "events.jsonl", stream=None))
    assert code == 1
    err = _events(job)[-1]
    assert (err.type, err.code, err.stage) == ("error", "NO_FACE", "track") and err.hint
    assert not stage_done(job, "track")


def test_unexpected_exception_is_internal_error(job):
    def bug(ctx):
        raise ZeroDivisionError("oops")

    assert run_job(job, stages=[Stage("x", bug)], sink=EventSink(job / "events.jsonl", stream=None)) == 1
    assert _events(job)[-1].code == "INTERNAL"


def test_cancel_file_stops_at_next_check(job):
    def first(ctx):
        (job / "cancel").write_text("")
        ctx.cancel.check()
        return {}

    token = CancelToken(job / "cancel")
    code = run_job(job, stages=[Stage("a", first)], sink=EventSink(job / "events.jsonl", stream=None), cancel=token)
    assert code == EXIT_CANCELLED
    assert _events(job)[-1].code == "CANCELLED"
    assert not stage_done(job, "a")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"


def test_atomic_dir_and_partials(tmp_path):
    with pytest.raises(KeyError):
        with atomic_dir(tmp_path / "view0") as d:
            (d / "0000.png").write_bytes(b"x")
            raise KeyError("interrupted")
    assert not (tmp_path / "view0").exists()
    with atomic_dir(tmp_path / "view0") as d:
        (d / "0000.png").write_bytes(b"x")
    assert (tmp_path / "view0" / "0000.png").exists()
    (tmp_path / ".view1.abc12_x9.part").mkdir()  # the names atomic_dir / atomic_path leave when killed
    (tmp_path / ".notes.abc.part").write_text("a user's file")  # not one of ours: kept
    assert remove_partials(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.abc.part", "view0"]


def test_progress_eta(tmp_path):
    sink = EventSink(None, stream=None)
    first = sink.progress("corpus", 0, 10)
    assert first.eta_s is None
    later = sink.progress("corpus", 5, 10)
    assert later.eta_s is not None and later.eta_s >= 0
    line = json.loads(later.dumps())
    assert set(line) >= {"t", "type", "stage", "done", "total", "eta_s"}


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "d"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


@pytest.mark.parametrize("exc, code", [(MemoryError(), "OUT_OF_MEMORY"),
                                       (type("OutOfMemoryError", (RuntimeError,), {})("CUDA"), "OUT_OF_MEMORY")])
def test_out_of_memory_becomes_its_own_code(job, exc, code):
    def hungry(ctx):
        raise exc

    assert run_job(job, stages=[Stage("x", hungry)], sink=EventSink(job / "events.jsonl", stream=None)) == 1
    assert _events(job)[-1].code == code
