"""What a job stage is: its name, its ``run(ctx)`` and the :class:`StageContext` it gets.

Apart from :mod:`backend.jobs` (the runner) so that the stages (``backend/job_stages.py``,
``backend/avatar/fit_export_stages.py``) and the runner import it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .events import CancelToken, EventSink
from .jobpaths import confine
from .protocol import JobSpec


@dataclass
class StageContext:
    """What a stage gets: the job, where to write, how to report, when to stop."""

    job_dir: Path
    spec: JobSpec
    sink: EventSink
    cancel: CancelToken
    stage: str
    cache: dict[str, Any] = field(default_factory=dict)  # shared between stages of one run

    @property
    def stage_dir(self) -> Path:
        return stage_dir(self.job_dir, self.stage)

    def path(self, rel: str, *names: str, where: str | None = None) -> Path:
        """``job_dir/rel/names...`` through the confinement (:func:`backend.jobpaths.confine`)."""
        return confine(self.job_dir, rel, *names, where=where or "/".join((rel, *names)))

    def progress(self, done: int, total: int) -> None:
        self.sink.progress(self.stage, done, total)

    def warn(self, message: str) -> None:
        self.sink.warning(message, stage=self.stage)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StageContext], dict[str, str]]  # returns outputs: name -> job-relative path


def stage_dir(job_dir: Path, name: str) -> Path:
    """``stages/<name>`` of the job, confined (a link that leaves the job is refused)."""
    return confine(job_dir, "stages", name, where=f"stages/{name}")
