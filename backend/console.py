"""The command line for people: a progress bar per stage and a summary, drawn from the event stream.

The backend has one event source, :class:`~backend.events.EventSink`, which writes one JSON object
per line to stdout -- the machine interface the add-on and scripts read. When stdout is a terminal
(and ``--json`` was not asked for), :func:`human_console` puts an :class:`EventConsole` in its place:
a text stream that parses those same lines back into :class:`~backend.protocol.Event` objects and
draws them with ``rich`` (one bar per stage with the backend's own ETA, warnings and errors in colour,
and at the end the outputs as absolute paths). Lines that are not events (a tool's own report) pass
through unchanged. The job's ``events.jsonl`` is written as always, so nothing is lost for machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskID, TextColumn
from rich.text import Text

from .errors import MVP4DError
from .protocol import Event

# MVP4D_OUTPUT=json|human overrides the terminal test (e.g. human output in a CI log, JSON on a terminal)
OUTPUT_ENV = "MVP4D_OUTPUT"


def wants_human_output(json_flag: bool, stream: IO[str] | None = None) -> bool:
    """Human output unless ``--json`` was given or stdout is not a terminal (the add-on reads a pipe)."""
    if json_flag:
        return False
    forced = os.environ.get(OUTPUT_ENV, "").strip().lower()
    if forced in ("json", "human"):
        return forced == "human"
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


class _StateColumn(ProgressColumn):
    """ETA from the backend's progress events while a stage runs; its duration once it ended."""

    def render(self, task) -> Text:  # noqa: ANN001 - rich's Task
        state = task.fields.get("state", "running")
        if state == "end":
            return Text(f"done in {_duration(task.fields.get('seconds', 0.0))}", style="green")
        if state == "skip":
            return Text("done earlier (resumed)", style="dim")
        if state == "failed":
            return Text("failed", style="bold red")
        eta = task.fields.get("eta")
        return Text("ETA …" if eta is None else f"ETA {_duration(eta)}", style="cyan")


class EventConsole:
    """A text stream for :class:`EventSink` that draws events for a person instead of printing JSON.

    ``base_dir`` (the job folder) turns the job-relative paths of ``preview`` and ``done`` events into
    absolute ones. :meth:`close` stops the live display; it is called by :func:`human_console`.
    """

    def __init__(self, console: Console, base_dir: str | Path | None = None):
        self.console = console
        self.base_dir = Path(base_dir) if base_dir else None
        self._buffer = ""
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._started: dict[str, float] = {}
        self._totals: dict[str, int] = {}
        self._t0 = time.time()
        self.warnings = 0
        self.outcome: str | None = None  # "done" or "error" once the command reported its end

    # the text-stream side (what EventSink and print() call) -------------------------------------
    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self._line(line)
        return len(text)

    def flush(self) -> None:
        self.console.file.flush()

    def isatty(self) -> bool:
        return True

    def close(self) -> None:
        if self._buffer:
            self._line(self._buffer)
            self._buffer = ""
        self._stop_progress()

    def _line(self, line: str) -> None:
        event = None
        if line.lstrip().startswith("{"):
            try:
                event = Event.from_json(json.loads(line))
            except (ValueError, TypeError, MVP4DError):
                event = None
        if event is None:
            self._print(Text(line))
        else:
            self.render(event)

    # the drawing side -----------------------------------------------------------------------------
    def render(self, event: Event) -> None:
        """Draw one event: bars for ``stage``/``progress``, lines for the rest, a summary for ``done``."""
        getattr(self, f"_on_{event.type}")(event)

    def _print(self, renderable: Text | str) -> None:
        self.console.print(renderable, highlight=False, soft_wrap=True)

    def _bars(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("[bold]{task.description:<8}"), BarColumn(bar_width=32), MofNCompleteColumn(),
                _StateColumn(), console=self.console, redirect_stdout=False, redirect_stderr=False,
                transient=False,
            )
            self._progress.start()
        return self._progress

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._tasks.clear()
            self._totals.clear()

    def _task(self, stage: str) -> TaskID:
        if stage not in self._tasks:
            self._tasks[stage] = self._bars().add_task(stage, total=None, state="running", eta=None)
        return self._tasks[stage]

    def _on_stage(self, e: Event) -> None:
        assert e.stage is not None
        task = self._task(e.stage)
        bars = self._bars()
        if e.status == "start":
            self._started[e.stage] = e.t
            bars.update(task, state="running", eta=None)
        elif e.status == "end":
            total = self._totals.get(e.stage, 1)
            seconds = e.t - self._started.get(e.stage, e.t)
            bars.update(task, total=total, completed=total, state="end", seconds=seconds)
        elif e.status == "skip":
            bars.update(task, total=1, completed=1, state="skip")
        bars.refresh()

    def _on_progress(self, e: Event) -> None:
        assert e.stage is not None
        self._totals[e.stage] = max(e.total or 0, 1)
        bars = self._bars()
        bars.update(self._task(e.stage), total=self._totals[e.stage], completed=e.done, eta=e.eta_s)
        bars.refresh()  # every event is drawn (events are already throttled by the stages)

    def _on_log(self, e: Event) -> None:
        prefix = f"{e.stage}: " if e.stage else ""
        self._print(Text(f"  {prefix}{e.message}", style="dim"))

    def _on_warning(self, e: Event) -> None:
        self.warnings += 1
        prefix = f"{e.stage}: " if e.stage else ""
        code = f" [{e.code}]" if e.code else ""
        self._print(Text(f"! warning{code} {prefix}{e.message}", style="yellow"))

    def _on_preview(self, e: Event) -> None:
        self._print(Text(f"  preview: {self._abs(e.path or '')}", style="dim"))

    def _on_error(self, e: Event) -> None:
        self.outcome = "error"
        if e.stage in self._tasks:
            self._bars().update(self._tasks[e.stage], state="failed")
        self._stop_progress()
        where = f" in stage '{e.stage}'" if e.stage else ""
        self._print(Text(f"✗ {e.code}{where}: {e.message}", style="bold red"))
        if e.hint:
            self._print(Text(f"  hint: {e.hint}", style="red"))

    def _on_done(self, e: Event) -> None:
        self.outcome = "done"
        self._stop_progress()
        outputs = e.outputs or {}
        took = _duration(time.time() - self._t0)
        warn = f", {self.warnings} warning(s) above" if self.warnings else ""
        self._print(Text(f"✓ finished in {took}{warn}", style="bold green"))
        if self.base_dir is not None:
            self._print(Text(f"  job folder: {self.base_dir.resolve()}"))
        if outputs:
            width = max(len(k) for k in outputs)
            self._print(Text("  outputs:"))
            for name, rel in outputs.items():
                self._print(Text(f"    {name:<{width}}  {self._abs(rel)}"))

    def _abs(self, rel: str) -> str:
        path = Path(rel)
        if self.base_dir is not None and not path.is_absolute():
            path = self.base_dir / path
        return str(path.resolve()) if self.base_dir is not None else str(path)


@contextlib.contextmanager
def human_console(enabled: bool, base_dir: str | Path | None = None,
                  console: Console | None = None) -> Iterator[EventConsole | None]:
    """While active, stdout is an :class:`EventConsole` over the real stdout (when ``enabled``).

    Yields the console (set its ``base_dir`` once the job folder is known) or None when disabled, so
    that the JSON lines go to stdout untouched.
    """
    if not enabled:
        yield None
        return
    real = sys.stdout
    con = EventConsole(console or Console(file=real, force_terminal=True), base_dir)
    sys.stdout = con  # type: ignore[assignment]
    try:
        yield con
    finally:
        sys.stdout = real
        con.close()
