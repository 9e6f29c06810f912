"""Event emission and cancellation: how a running job talks to whoever started it.

:class:`EventSink` appends each :class:`~backend.protocol.Event` to ``events.jsonl`` (when the job has
a folder) and echoes it on stdout, one JSON object per line — the add-on's reader thread and any
script parse the same stream. :class:`CancelToken` turns SIGTERM/SIGINT or a ``cancel`` file in the job
folder into :class:`~backend.errors.Cancelled` at the next safe point (between views, frames or steps).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from .errors import Cancelled, MVP4DError
from .protocol import Event, error_event


class EventSink:
    """Writes events to ``events.jsonl`` and/or a stream; computes progress ETAs."""

    def __init__(self, events_file: str | Path | None = None, stream: IO[str] | None = sys.stdout):
        self.events_file = Path(events_file) if events_file else None
        self.stream = stream
        self.history: list[Event] = []
        self._stage_started: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        if self.events_file:
            self.events_file.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: Event) -> Event:
        line = event.dumps()
        with self._lock:
            self.history.append(event)
            if self.events_file:
                with open(self.events_file, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
            if self.stream is not None:
                self.stream.write(line + "\n")
                self.stream.flush()
        return event

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
