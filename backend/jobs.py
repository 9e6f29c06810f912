"""The staged job runner: job folders, stages, checkpoints, resume and cancellation.

A job folder (DESIGN.md, "Job folder") holds ``job.json``, ``inputs/``, ``events.jsonl``,
``stages/<name>/`` and ``outputs/``. Stages run in order; a stage is finished when its
``stages/<name>/done.json`` exists, and a finished stage is never redone. Inside a stage, work is
checkpointed in units that are written atomically (e.g. one view of the corpus), so a stopped job
resumes at the first unfinished unit. Later issues append stages (fit, export) to :data:`STAGES`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EXIT_CANCELLED, EXIT_ERROR, Cancelled, bad_input
from .events import CancelToken, EventSink
from .failures import classify, job_log_dir
from .fsutil import remove_partials, write_json_atomic, write_text_atomic
from .preflight import check_animation_source, check_job
from .protocol import JOB_STAGES, InputsSpec, JobSpec, resolve_job_path


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

    def path(self, rel: str) -> Path:
        return resolve_job_path(self.job_dir, rel)

    def progress(self, done: int, total: int) -> None:
        self.sink.progress(self.stage, done, total)

    def warn(self, message: str) -> None:
        self.sink.warning(message, stage=self.stage)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StageContext], dict[str, str]]  # returns outputs: name -> job-relative path


def stage_dir(job_dir: Path, name: str) -> Path:
    return Path(job_dir) / "stages" / name


def stage_done(job_dir: Path, name: str) -> bool:
    return (stage_dir(job_dir, name) / "done.json").is_file()


def _default_stages() -> list[Stage]:
    # Imported lazily so `import backend.jobs` stays light (the add-on never imports it, but tools do).
    from .stages import STAGES

    return list(STAGES)


def create_job(
    job_dir: str | Path,
    reference_image: str | Path,
    spec: JobSpec | None = None,
    animation_file: str | Path | None = None,
) -> JobSpec:
    """Create (or reuse) a job folder: copy inputs under ``inputs/`` and write ``job.json``.

    If the folder already holds a job with the same spec, it is reused so the run resumes.
    A folder holding a *different* job is refused rather than overwritten.
    """
    job_dir = Path(job_dir)
    if job_dir.exists() and not job_dir.is_dir():
        raise bad_input(f"the job folder {job_dir} is a file", "Pass a new or empty folder as --out.")
    src = Path(reference_image)
    if not src.is_file():
        raise bad_input(f"reference image {src} does not exist or is not a file", "Pass an existing image file.")
    spec = spec or JobSpec(inputs=InputsSpec(reference_image=""))
    spec.inputs.reference_image = f"inputs/reference{src.suffix.lower() or '.png'}"
    if animation_file is not None:
        anim = Path(animation_file)
        if not anim.is_file():
            raise bad_input(f"animation file {anim} does not exist", "Pass an .npz of FLAME parameters.")
        spec.animation.source = f"inputs/animation{anim.suffix.lower()}"
        check_animation_source(str(anim), None)  # the file itself, before it is copied
    spec = JobSpec.from_json(spec.to_json())  # validate what we are about to write
    check_job(spec)  # every setting now, not after the corpus (run_job checks again, with the files)
    existing = job_dir / "job.json"
    if existing.is_file():
        old = JobSpec.load(job_dir)
        if old.to_json() != spec.to_json() or not _same_file(src, job_dir / spec.inputs.reference_image):
            raise bad_input(
                f"{job_dir} already holds a different job",
                "Choose an empty output folder, or run 'python -m backend run DIR' to resume that job.",
            )
        return old
    if job_dir.exists() and any(job_dir.iterdir()):
        raise bad_input(f"{job_dir} is not empty and holds no job.json", "Choose an empty output folder.")
    (job_dir / "inputs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, job_dir / spec.inputs.reference_image)
    if animation_file is not None:
        shutil.copyfile(animation_file, job_dir / spec.animation.source)
    write_text_atomic(job_dir / "job.json", spec.dumps() + "\n")
    return spec


def _is_job(job_dir: Path) -> bool:
    try:
        return (job_dir / "job.json").is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte ...: certainly not a job
        return False


def _same_file(a: Path, b: Path) -> bool:
    return b.is_file() and a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def run_job(
    job_dir: str | Path,
    *,
    stages: Sequence[Stage] | None = None,
    until: str | None = None,
    sink: EventSink | None = None,
    cancel: CancelToken | None = None,
) -> int:
    """Run (or resume) a job; return the process exit code. Errors become ``error`` events."""
    job_dir = Path(job_dir)
    sink = sink or EventSink(job_dir / "events.jsonl")
    cancel = cancel or CancelToken(job_dir / "cancel")
    current: str | None = None
    try:
        if not _is_job(job_dir):
            sink.events_file = None  # not a job: report on stdout only and create nothing there
        spec = JobSpec.load(job_dir)
        names = JOB_STAGES if stages is None else [st.name for st in stages]
        check_job(spec, job_dir, until=until, stage_names=names)  # all settings and inputs, before any stage
        stages = list(stages) if stages is not None else _default_stages()
        (job_dir / "cancel").unlink(missing_ok=True)  # a new run clears an old cancel request
        cache: dict[str, Any] = {}
        outputs: dict[str, str] = {}
        for st in stages:
            current = st.name
            if stage_done(job_dir, st.name):
                sink.stage(st.name, "skip")
            else:
                cancel.check()
                sink.stage(st.name, "start")
                sdir = stage_dir(job_dir, st.name)
                sdir.mkdir(parents=True, exist_ok=True)
                remove_partials(sdir)
                t0 = time.time()
                ctx = StageContext(job_dir, spec, sink, cancel, st.name, cache)
                produced = st.run(ctx)
                write_json_atomic(sdir / "done.json", {"seconds": round(time.time() - t0, 3), "outputs": produced})
                sink.stage(st.name, "end")
            outputs.update(json.loads((stage_dir(job_dir, st.name) / "done.json").read_text())["outputs"])
            if until is not None and st.name == until:
                break
        current = None
        sink.done(outputs)
        return 0
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - every failure reaches the user as an event
        err = classify(e, log_dir=job_log_dir(job_dir))  # INTERNAL writes its traceback to <job>/logs/
        sink.error(err, stage=current)
        return EXIT_CANCELLED if isinstance(err, Cancelled) else EXIT_ERROR
