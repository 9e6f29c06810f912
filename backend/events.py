"""Event emission and cancellation: how a running job talks to whoever started it.

:class:`EventSink` appends each :class:`~backend.protocol.Event` to ``events.jsonl`` (when the job has
a folder) and echoes it on stdout, one JSON object per line — the add-on's reader thread and any
script parse the same stream. :class:`CancelToken` turns SIGTERM/SIGINT or a ``cancel`` file in the job
folder into :class:`~backend.errors.Cancelled` at the next safe point (between views, frames or steps).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from .errors import Cancelled, MVP4DError
from .failures import os_error
from .protocol import Event, error_event


def repair_event_log(path: str | os.PathLike) -> bool:
    """Cut a torn last line (no newline: a kill or a full disk mid-write) off ``path``; True if it did.

    Only the bytes after the last newline go, so every complete event stays. Missing files and
    files that are not regular files are left alone (appending to them reports the problem).
    """
    path = Path(path)
    try:
        if not path.is_file() or path.is_symlink():
            return False
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return False
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return False
            keep, step = 0, 1 << 16
            pos = size
            while pos > 0:  # scan backwards for the last newline
                lo = max(0, pos - step)
                f.seek(lo)
                i = f.read(pos - lo).rfind(b"\n")
                if i >= 0:
                    keep = lo + i + 1
                    break
                pos = lo
            f.truncate(keep)
            return True
    except OSError:
        return False


def read_events(path: str | os.PathLike) -> list[Event]:
    """Every well-formed event in an ``events.jsonl``; torn or foreign lines are skipped, never fatal."""
    events: list[Event] = []
    try:
        data = Path(path).read_bytes()
    except OSError:
        return events
    for raw in data.split(b"\n"):
        line = raw.decode("utf-8", errors="replace").strip()
        if not line.startswith("{"):
            continue
        try:
            events.append(Event.from_json(json.loads(line)))
        except (ValueError, MVP4DError, TypeError, RecursionError):
            continue
    return events


STDOUT = object()  # EventSink's default stream: sys.stdout as it is when the sink is made (tests redirect it)


class EventSink:
    """Writes events to a stream (stdout) and appends them to ``events.jsonl``; computes progress ETAs.

    Order and failure rules (docs/reliability.md, section 3): each event goes to the stream *first*,
    then to the file, so the user always sees it. The line is appended with one ``os.write`` of the
    whole line; if the file cannot take it (full disk, read-only folder, ``events.jsonl`` a folder ...)
    the partial line is cut off again, the file is not tried any more, and the failure is raised as
    ``DISK_FULL``/``NOT_WRITABLE`` naming the path -- except while reporting an ``error`` event, which
    is already on the stream: then a ``warning`` with that code follows it. A torn last line left by a
    kill or a full disk is dropped when the sink first appends (:func:`repair_event_log`).
    """

    def __init__(self, events_file: str | Path | None = None, stream: IO[str] | None | object = STDOUT):
        self.events_file = Path(events_file) if events_file else None
        self.stream: IO[str] | None = sys.stdout if stream is STDOUT else stream  # type: ignore[assignment]
        self.history: list[Event] = []
        self.file_error: MVP4DError | None = None  # set once the file failed; it is not tried again
        self._repaired = False
        self._stage_started: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def emit(self, event: Event) -> Event:
        line = event.dumps() + "\n"
        with self._lock:
            self.history.append(event)
            self._to_stream(line)
            if self.events_file is None or self.file_error is not None:
                return event
            try:
                self._append(line.encode("utf-8"))
            except OSError as e:
                err = os_error(e, self.events_file)
                if err.code not in ("DISK_FULL", "NOT_WRITABLE"):  # e.g. events.jsonl is a folder
                    err = MVP4DError("NOT_WRITABLE", f"{self.events_file}: cannot append to the job's event log "
                                                     f"({e.strerror or type(e).__name__})")
                self.file_error = err
            else:
                return event
            if event.type != "error":
                raise self.file_error
            note = Event("warning", stage=event.stage, code=self.file_error.code,
                         message=f"the error above could not be recorded in the job's event log: "
                                 f"{self.file_error.message}")
            self.history.append(note)
            self._to_stream(note.dumps() + "\n")
        return event

    def _to_stream(self, line: str) -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError):  # closed pipe or stream: the file still gets the event
            self.stream = None

    def _append(self, data: bytes) -> None:
        path = self.events_file
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self._repaired:
            repair_event_log(path)
            self._repaired = True
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    if n <= 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                    view = view[n:]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)  # never leave a torn line behind
                raise
        finally:
            os.close(fd)

    # Convenience wrappers -------------------------------------------------------------------
    def stage(self, stage: str, status: str, **kw: Any) -> Event:
        if status == "start":
            self._stage_started.pop(stage, None)
        return self.emit(Event("stage", stage=stage, status=status, **kw))

    def progress(self, stage: str, done: int, total: int) -> Event:
        """Progress with an ETA extrapolated from the rate since this stage's first progress event."""
        now = time.time()
        t0, d0 = self._stage_started.setdefault(stage, (now, done))
        eta = None
        if done > d0 and total >= done:
            eta = round((now - t0) / (done - d0) * (total - done), 1)
        return self.emit(Event("progress", stage=stage, done=done, total=total, eta_s=eta))

    def log(self, message: str, stage: str | None = None) -> Event:
        return self.emit(Event("log", stage=stage, message=message))

    def warning(self, message: str, stage: str | None = None, code: str | None = None) -> Event:
        return self.emit(Event("warning", stage=stage, message=message, code=code))

    def preview(self, path: str, stage: str | None = None) -> Event:
        return self.emit(Event("preview", stage=stage, path=path))

    def error(self, err: MVP4DError, stage: str | None = None) -> Event:
        return self.emit(error_event(err, stage))

    def done(self, outputs: dict[str, str]) -> Event:
        return self.emit(Event("done", outputs=outputs))


def report_error(err: MVP4DError, stage: str | None = None) -> int:
    """Print ``err`` as an ``error`` event on stdout (tools without a job log); the exit code to return."""
    EventSink(None, stream=sys.stdout).error(err, stage=stage)
    from .errors import EXIT_CANCELLED, EXIT_ERROR

    return EXIT_CANCELLED if isinstance(err, Cancelled) else EXIT_ERROR


class CancelToken:
    """Cooperative cancellation: ``check()`` raises :class:`Cancelled` once a cancel was requested."""

    def __init__(self, cancel_file: str | Path | None = None):
        self.cancel_file = Path(cancel_file) if cancel_file else None
        self._event = threading.Event()
        self.reason = ""

    def request(self, reason: str = "cancel requested") -> None:
        self.reason = reason
        self._event.set()

    @property
    def requested(self) -> bool:
        if not self._event.is_set() and self.cancel_file is not None and self.cancel_file.exists():
            self.request(f"cancel file {self.cancel_file.name} found")
        return self._event.is_set()

    def check(self) -> None:
        if self.requested:
            raise Cancelled(f"The job was cancelled ({self.reason}).")

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT request cancellation instead of killing the process mid-write."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: Any) -> None:
            self.request(f"signal {signal.Signals(signum).name}")

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
