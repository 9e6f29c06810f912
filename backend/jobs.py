"""The staged job runner: job folders, stages, checkpoints, resume and cancellation.

A job folder (docs/design.md, "Job folder") holds ``job.json``, ``inputs/``, ``events.jsonl``,
``stages/<name>/`` and ``outputs/``. Stages run in order; a stage is finished when its
``stages/<name>/done.json`` exists, and a finished stage is never redone. Inside a stage, work is
checkpointed in units that are written atomically (e.g. one view of the corpus), so a stopped job
resumes at the first unfinished unit. Later issues append stages (fit, export) to :data:`STAGES`.

One process runs a job at a time (``job.lock``, :mod:`backend.joblock`); every path inside the job is
derived through :func:`backend.jobpaths.confine`, and a run refuses a job holding a link that leads
out of it (docs/reliability.md).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import EXIT_CANCELLED, EXIT_ERROR, Cancelled, bad_input
from .events import CancelToken, EventSink
from .failures import classify, job_log_dir
from .fsutil import PARTIAL_RE, atomic_path, remove_inside, remove_partials, write_json_atomic, write_text_atomic
from .joblock import LOCK_NAME, JobLock
from .jobpaths import check_own_file, check_tree, confine
from .preflight import check_animation_source, check_job
from .protocol import JOB_STAGES, InputsSpec, JobSpec
from .stage_context import Stage, StageContext, stage_dir


def done_file(job_dir: Path, name: str) -> Path:
    """``stages/<name>/done.json``: it exists once the stage is finished (confined like every job path)."""
    return confine(job_dir, "stages", name, "done.json", where=f"stages/{name}/done.json")


def stage_done(job_dir: Path, name: str) -> bool:
    return done_file(job_dir, name).is_file()


def _default_stages() -> list[Stage]:
    # Imported lazily so `import backend.jobs` stays light (the add-on never imports it, but tools do).
    from .job_stages import STAGES

    return list(STAGES)


def create_job(
    job_dir: str | Path,
    reference_image: str | Path,
    spec: JobSpec | None = None,
    animation_file: str | Path | None = None,
) -> JobSpec:
    """Create (or reuse) a job folder: copy inputs under ``inputs/`` and write ``job.json``.

    If the folder already holds a job with the same spec, it is reused so the run resumes.
    A folder holding a *different* job, or anything else, is refused before anything is written
    (a folder left by an interrupted creation, holding only our inputs, is taken up again).
    Creation runs under the job lock, so two commands creating the same job cannot interleave.
    """
    job_dir = Path(job_dir)
    src = Path(reference_image)
    if not src.is_file():
        raise bad_input(f"reference image {src} does not exist or is not a file", "Pass an existing image file.")
    spec = spec or JobSpec(inputs=InputsSpec(reference_image=""))
    spec.inputs.reference_image = f"inputs/reference{_suffix(src, '.png')}"
    if animation_file is not None:
        anim = Path(animation_file)
        if not anim.is_file():
            raise bad_input(f"animation file {anim} does not exist", "Pass an .npz of FLAME parameters.")
        spec.animation.source = f"inputs/animation{_suffix(anim, '.npz')}"
        check_animation_source(str(anim), None)  # the file itself, before it is copied
    spec = JobSpec.from_json(spec.to_json())  # validate what we are about to write
    check_job(spec)  # every setting now, not after the corpus (run_job checks again, with the files)
    if job_dir.exists() and not job_dir.is_dir():
        raise bad_input(f"{job_dir} exists and is not a folder", "Choose a new or empty output folder.")
    if not (job_dir / "job.json").is_file():
        _check_fresh(job_dir)  # before the lock file is made: a user's folder gets nothing of ours
    job_dir.mkdir(parents=True, exist_ok=True)
    with JobLock(job_dir):
        if confine(job_dir, "job.json", where="job.json").is_file():
            old = JobSpec.load(job_dir)
            ref = confine(job_dir, spec.inputs.reference_image, where="job.json: inputs.reference_image")
            if old.to_json() != spec.to_json() or not _same_file(src, ref):
                raise bad_input(
                    f"{job_dir} already holds a different job",
                    "Choose an empty output folder, or run 'python -m backend run DIR' to resume that job.",
                )
            return old
        _check_fresh(job_dir)
        copies = [(src, spec.inputs.reference_image)]
        if animation_file is not None:
            copies.append((Path(animation_file), spec.animation.source))
        for source, rel in copies:
            with atomic_path(confine(job_dir, rel, where=rel)) as tmp:
                shutil.copyfile(source, tmp)
        write_text_atomic(confine(job_dir, "job.json", where="job.json"), spec.dumps() + "\n")  # last: the job exists
    return spec


def _suffix(path: Path, default: str) -> str:
    """The input's extension for its copy's name when it is a plain one (``.png``, ``.jpg``), else ``default``."""
    s = path.suffix.lower()
    return s if re.fullmatch(r"\.[a-z0-9]{1,10}", s) else default


def _same_file(a: Path, b: Path) -> bool:
    return b.is_file() and a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def _check_fresh(job_dir: Path) -> None:
    """Refuse a non-empty folder unless all it holds is what an interrupted :func:`create_job` leaves."""
    if not job_dir.is_dir():
        return
    for entry in job_dir.iterdir():
        if entry.name == LOCK_NAME and entry.is_file() and not entry.is_symlink():
            continue
        if entry.name == "inputs" and entry.is_dir() and not entry.is_symlink() and all(
            re.fullmatch(r"(reference|animation)\.[a-z0-9]{1,10}", f.name) or PARTIAL_RE.match(f.name)
            for f in entry.iterdir()
        ):
            continue
        raise bad_input(f"{job_dir} is not empty and holds no job.json", "Choose an empty output folder.")


def run_job(
    job_dir: str | Path,
    *,
    stages: Sequence[Stage] | None = None,
    until: str | None = None,
    sink: EventSink | None = None,
    cancel: CancelToken | None = None,
) -> int:
    """Run (or resume) a job; return the process exit code. Errors become ``error`` events.

    The run holds the job's lock (:class:`~backend.joblock.JobLock`) from start to end; a second
    run of the same job ends at once with ``JOB_LOCKED``. Under the lock, temporaries left by an
    interrupted run anywhere in the job are removed first.
    """
    job_dir = Path(job_dir)
    try:
        sink, lock = _open_job(job_dir, sink)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - on stdout only: the job's log may be another
        err = classify(e)                        # run's, or lead outside the job (a read-only folder: NOT_WRITABLE)
        EventSink(None, stream=sink.stream if sink is not None else sys.stdout).error(err)
        return EXIT_CANCELLED if isinstance(err, Cancelled) else EXIT_ERROR
    cancel = cancel or CancelToken(job_dir / "cancel")
    current: str | None = None
    try:
        spec = JobSpec.load(job_dir)
        spec.check_paths(job_dir)
        check_tree(job_dir)  # no link leads out of the job, so nothing derived inside it can
        names = JOB_STAGES if stages is None else [st.name for st in stages]
        check_job(spec, job_dir, until=until, stage_names=names)  # all settings and inputs, before any stage
        stages = list(stages) if stages is not None else _default_stages()
        _clear_cancel_request(job_dir)
        removed = remove_partials(job_dir, recursive=True)
        if removed:
            sink.log(f"removed {removed} temporary file(s) left by an interrupted run")
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
                t0 = time.time()
                ctx = StageContext(job_dir, spec, sink, cancel, st.name, cache)
                produced = st.run(ctx)
                write_json_atomic(done_file(job_dir, st.name), {"seconds": round(time.time() - t0, 3), "outputs": produced})
                sink.stage(st.name, "end")
            outputs.update(json.loads(done_file(job_dir, st.name).read_text())["outputs"])
            if until is not None and st.name == until:
                break
        current = None
        sink.done(outputs)
        return 0
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - every failure reaches the user as an event
        err = classify(e, log_dir=job_log_dir(job_dir))  # INTERNAL writes its traceback to <job>/logs/
        sink.error(err, stage=current)
        return EXIT_CANCELLED if isinstance(err, Cancelled) else EXIT_ERROR
    finally:
        lock.release()


def _open_job(job_dir: Path, sink: EventSink | None) -> tuple[EventSink, JobLock]:
    """Take the job's lock, then open its event log (confined: a link out of the job is refused)."""
    if not job_dir.is_dir() or not (job_dir / "job.json").is_file():
        JobSpec.load(job_dir)  # BAD_INPUT naming the folder; nothing is created in a folder that holds no job
    events = check_own_file(confine(job_dir, "events.jsonl", where="events.jsonl"), "events.jsonl")
    lock = JobLock(job_dir).acquire()
    return sink or EventSink(events), lock


def _clear_cancel_request(job_dir: Path) -> None:
    """A new run clears an old cancel request (a file, or a link: removed as a link)."""
    p = job_dir / "cancel"
    if p.is_symlink() or p.is_file():
        remove_inside(p, job_dir)
    elif p.is_dir():
        try:
            p.rmdir()
        except OSError as e:
            raise bad_input(f"{p} is a folder that is not empty", "Remove it: a 'cancel' entry stops the job.") from e

