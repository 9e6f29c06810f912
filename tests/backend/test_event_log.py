"""Issue 14, class 3: a full or unwritable disk never breaks error reporting, and events.jsonl stays parseable.

The faults are simulated in-process (the tests run as root, so chmod cannot make a folder read-only):
``os.write`` that fills the disk half-way through a line, ``open``/``os.open``/``mkdir`` that refuse
every write under the job folder with EROFS or EACCES, an ``events.jsonl`` that is a folder.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
from pathlib import Path

import pytest

from backend import events as events_mod
from backend.errors import MVP4DError
from backend.events import EventSink, read_events, repair_event_log
from backend.fsutil import write_bytes_atomic
from backend.jobs import Stage, run_job
from backend.protocol import Event


def _stdout_events(stream: io.StringIO) -> list[dict]:
    lines = stream.getvalue().splitlines()
    assert all(line.startswith("{") for line in lines), lines
    return [json.loads(line) for line in lines]


def _file_lines_parse(path: Path) -> list[Event]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), data[-80:]
    return [Event.loads(line) for line in data.decode("utf-8").splitlines()]


def _ok_stage(ctx):
    write_bytes_atomic(ctx.stage_dir / "out.bin", b"x")
    return {"out": "stages/a/out.bin"}


class _Recorder(io.StringIO):
    """A stdout that notes, for each line, whether events.jsonl already held it (it must not: stdout first)."""

    def __init__(self, path: Path):
        super().__init__()
        self.path, self.file_had_it = path, []

    def write(self, s: str) -> int:
        on_disk = self.path.read_text() if self.path.is_file() else ""
        self.file_had_it.append(s.strip() in on_disk)
        return super().write(s)


def test_stdout_gets_each_event_before_the_file(job):
    out = _Recorder(job / "events.jsonl")
    sink = EventSink(job / "events.jsonl", stream=out)
    sink.log("one")
    sink.error(MVP4DError("NO_FACE", "none"))
    assert out.file_had_it == [False, False]
    assert [e.type for e in _file_lines_parse(job / "events.jsonl")] == ["log", "error"]


def test_disk_full_mid_line_cuts_the_torn_line_and_names_the_file(job, monkeypatch):
    sink = EventSink(job / "events.jsonl", stream=io.StringIO())
    sink.log("before")
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 8:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(events_mod.os, "write", half_then_full)
    with pytest.raises(MVP4DError) as ei:
        sink.progress("corpus", 1, 4)
    assert ei.value.code == "DISK_FULL" and str(job / "events.jsonl") in ei.value.message
    assert [e.message for e in _file_lines_parse(job / "events.jsonl")] == ["before"]  # no half line left
    assert _stdout_events(sink.stream)[-1]["type"] == "progress"  # the user still saw it
    sink.error(MVP4DError("NO_FACE", "none"))  # the file is not tried again: no second failure
    assert _stdout_events(sink.stream)[-1]["code"] == "NO_FACE"


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_run_on_a_full_disk_ends_with_disk_full_on_stdout(job, monkeypatch, err):
    def full(fd, data):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(events_mod.os, "write", full)
    out = io.StringIO()
    assert run_job(job, stages=[Stage("a", _ok_stage)], sink=EventSink(job / "events.jsonl", stream=out)) == 1
    last = _stdout_events(out)[-1]
    assert (last["type"], last["code"]) == ("error", "DISK_FULL") and "events.jsonl" in last["message"]
    assert last["hint"]
    _file_lines_parse(job / "events.jsonl")


def test_a_stage_that_fills_the_disk_reports_disk_full_with_its_path(job):
    def fills(ctx):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(ctx.stage_dir / "big.bin"))

    out = io.StringIO()
    assert run_job(job, stages=[Stage("a", fills)], sink=EventSink(job / "events.jsonl", stream=out)) == 1
    last = _stdout_events(out)[-1]
    assert (last["code"], last["stage"]) == ("DISK_FULL", "a") and "big.bin" in last["message"]
    assert _file_lines_parse(job / "events.jsonl")[-1].code == "DISK_FULL"


def _refuse_writes_under(monkeypatch, root: Path, err: int) -> None:
    """Make every write under ``root`` fail like a read-only folder (reads still work)."""
    root = str(root)

    def inside(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)).startswith(root)

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def fake_open(file, mode="r", *a, **kw):
        if inside(file) and any(c in mode for c in "wax+"):
            raise OSError(err, os.strerror(err), os.fspath(file))
        return real_open(file, mode, *a, **kw)

    def fake_os_open(path, flags, *a, **kw):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(err, os.strerror(err), os.fspath(path))
        return real_os_open(path, flags, *a, **kw)

    def fake_mkdir(path, *a, **kw):
        if inside(path):
            raise OSError(err, os.strerror(err), os.fspath(path))
        return real_mkdir(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES, errno.EPERM])
def test_read_only_job_folder_gives_not_writable_on_stdout(job, monkeypatch, err):
    before = (job / "events.jsonl").read_bytes() if (job / "events.jsonl").exists() else b""
    _refuse_writes_under(monkeypatch, job, err)
    out = io.StringIO()
    assert run_job(job, stages=[Stage("a", _ok_stage)], sink=EventSink(job / "events.jsonl", stream=out)) == 1
    monkeypatch.undo()
    last = _stdout_events(out)[-1]
    assert (last["type"], last["code"]) == ("error", "NOT_WRITABLE") and str(job) in last["message"]
    assert "Traceback" not in out.getvalue()
    assert ((job / "events.jsonl").read_bytes() if (job / "events.jsonl").exists() else b"") == before
    assert not (job / "stages" / "a" / "done.json").exists()


def test_events_file_that_is_a_folder(job):
    (job / "events.jsonl").mkdir()
    out = io.StringIO()
    assert run_job(job, stages=[Stage("a", _ok_stage)], sink=EventSink(job / "events.jsonl", stream=out)) == 1
    last = _stdout_events(out)[-1]
    assert (last["type"], last["code"]) == ("error", "NOT_WRITABLE") and "events.jsonl" in last["message"]


def test_error_event_that_cannot_be_recorded_is_followed_by_a_warning(job, monkeypatch):
    def no_face(ctx):
        monkeypatch.setattr(events_mod.os, "write",
                            lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
        raise MVP4DError("NO_FACE", "no face found")

    out = io.StringIO()
    assert run_job(job, stages=[Stage("a", no_face)], sink=EventSink(job / "events.jsonl", stream=out)) == 1
    evs = _stdout_events(out)
    assert (evs[-2]["type"], evs[-2]["code"]) == ("error", "NO_FACE")  # the job's own error reached stdout
    assert (evs[-1]["type"], evs[-1]["code"]) == ("warning", "DISK_FULL") and "events.jsonl" in evs[-1]["message"]


@pytest.mark.parametrize("tail", [b'{"type": "sta', b'{"type": "log", "message": "caf\xc3', b"\x00\x00\x00"])
def test_torn_last_line_is_dropped_on_the_next_run(job, tail):
    ok = _Recorder(job / "x")  # any stream
    assert run_job(job, stages=[Stage("a", _ok_stage)], sink=EventSink(job / "events.jsonl", stream=ok)) == 0
    good = (job / "events.jsonl").read_bytes()
    (job / "events.jsonl").write_bytes(good + tail)  # a kill or a full disk in the middle of a line
    assert len(read_events(job / "events.jsonl")) == len(good.splitlines())  # readers skip it meanwhile
    assert run_job(job, stages=[Stage("a", _ok_stage)], sink=EventSink(job / "events.jsonl", stream=None)) == 0
    evs = _file_lines_parse(job / "events.jsonl")  # every line parses again, nothing old lost
    assert (job / "events.jsonl").read_bytes().startswith(good)
    assert [e.type for e in evs][-2:] == ["stage", "done"]


def test_repair_keeps_complete_lines_and_leaves_other_files_alone(tmp_path):
    p = tmp_path / "events.jsonl"
    p.write_bytes(b'{"type": "log", "message": "a"}\n' * 5000 + b'{"ty')  # longer than one scan block
    assert repair_event_log(p) and p.read_bytes().endswith(b"}\n") and len(read_events(p)) == 5000
    assert not repair_event_log(p)  # already whole
    (tmp_path / "only-torn.jsonl").write_bytes(b'{"type"')
    assert repair_event_log(tmp_path / "only-torn.jsonl") and (tmp_path / "only-torn.jsonl").read_bytes() == b""
    (tmp_path / "dir.jsonl").mkdir()
    assert not repair_event_log(tmp_path / "dir.jsonl") and not repair_event_log(tmp_path / "missing.jsonl")


def test_closed_stdout_does_not_stop_the_file(job):
    out = io.StringIO()
    out.close()
    sink = EventSink(job / "events.jsonl", stream=out)
    sink.log("still recorded")
    assert _file_lines_parse(job / "events.jsonl")[-1].message == "still recorded"


def test_addon_tailer_survives_broken_bytes_and_keeps_the_torn_tail_for_later(tmp_path):
    """The add-on follows events.jsonl of a re-attached job; bad bytes in a line must not stop it."""
    import queue

    from backend import protocol
    from mvp4d_blender.io.jobs import BackendProcess

    good = Event("log", message="before").dumps().encode() + b"\n"
    broken = b'{"type": "log", "message": "caf\xc3\x28"}garbage\n'  # invalid UTF-8 and not one event
    after = Event("log", message="after").dumps().encode() + b"\n"
    (tmp_path / "events.jsonl").write_bytes(good + broken + after + b'{"type": "do')  # torn tail
    bp = BackendProcess("python", [], workdir=tmp_path, backend_root=tmp_path, proto=protocol)
    bp.pid = None  # not running: one pass over the file, then end of stream
    bp._tail_events(tmp_path / "events.jsonl", 0)
    got = []
    while True:
        try:
            got.append(bp._queue.get_nowait())
        except queue.Empty:
            break
    assert [getattr(e, "message", e) for e in got] == ["before", "after", None]


@pytest.mark.parametrize("exc, code, text", [
    (OSError(errno.ENOSPC, "No space left on device", "/j/a.png"), "DISK_FULL", "/j/a.png"),
    (OSError(errno.EROFS, "Read-only file system", "/j"), "NOT_WRITABLE", "/j"),
    (OSError(errno.ELOOP, "Too many levels of symbolic links", "/j/l"), "BAD_INPUT", "/j/l"),
    (OSError(errno.EIO, "Input/output error", "/j/x"), "BAD_INPUT", "/j/x"),
    (RecursionError("maximum recursion depth exceeded"), "BAD_INPUT", "nested too deeply"),
    (ValueError("embedded null byte"), "BAD_INPUT", "NUL"),
    (UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed"), "BAD_INPUT", "cannot be encoded"),
    (MemoryError(), "OUT_OF_MEMORY", "memory"),
    (ModuleNotFoundError("No module named 'accelerate'", name="accelerate"), "BAD_INPUT", "accelerate"),
    (KeyboardInterrupt(), "CANCELLED", "cancelled"),
])
def test_classify_maps_each_fault_to_its_code(tmp_path, exc, code, text):
    from backend.failures import classify

    err = classify(exc, log_dir=tmp_path)
    assert err.code == code and text in err.message and err.hint
    assert not (tmp_path.exists() and any(tmp_path.iterdir()))  # only INTERNAL writes a log
