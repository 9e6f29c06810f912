"""Running jobs: the registry, the main-thread timer, finishing a job, re-attach and shutdown.

Each running :class:`~mvp4d_blender.io.jobs.BackendProcess` is registered under its folder. One
``bpy.app.timers`` callback (the only code that copies job state into Blender) polls them, writes the
status into every scene whose ``mvp4d.job_dir`` is that folder, shows the latest preview and, when a
job ends, runs its finisher (import the avatar, or apply a fit). ``load_post`` re-attaches scenes to
jobs still running from an earlier session (or marks them interrupted so Resume can continue them);
``atexit``/unregister stop every backend so quitting Blender never leaves one behind.
"""

from __future__ import annotations

import atexit
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import bpy
from bpy.app.handlers import persistent

from .. import backend_link
from ..io.jobs import BackendProcess, JobError
from . import common

PREVIEW_IMAGE = "MVP4D Preview"


@dataclass
class RunningJob:
    process: BackendProcess
    kind: str  # "generate" | "fit"
    on_finish: Callable[["RunningJob"], tuple[str, str]] | None  # -> (level, message)
    started: float


_jobs: dict[str, RunningJob] = {}

#: ``(kind, scene) -> on_finish`` for a job re-attached after a file load; ``ops_generate`` registers it
#: (so this module never imports the operators that import it)
FinisherFactory = Callable[[str, "bpy.types.Scene"], Callable[[RunningJob], tuple[str, str]] | None]
_finisher_factory: FinisherFactory | None = None


def register_finishers(factory: FinisherFactory) -> None:
    """Say how a re-attached job of each kind is finished (import the avatar, apply the fit...)."""
    global _finisher_factory
    _finisher_factory = factory


def key(job_dir) -> str:
    return str(Path(job_dir).resolve())


def running(job_dir) -> RunningJob | None:
    return _jobs.get(key(job_dir)) if job_dir else None


def any_running() -> bool:
    return any(not j.process.state.finished for j in _jobs.values())


def poll_no_job(op_cls) -> bool:
    """An operator's ``poll`` for steps that start a backend job: one job at a time, with the reason shown."""
    if any_running():
        op_cls.poll_message_set("A job is already running (Cancel it first)")
        return False
    return True


def _scenes_for(job_dir: str):
    k = key(job_dir)
    return [s for s in bpy.data.scenes if getattr(s, "mvp4d", None) and s.mvp4d.job_dir and key(s.mvp4d.job_dir) == k]


def _fmt_eta(eta) -> str:
    if eta is None:
        return ""
    eta = int(eta)
    return f"{eta // 60}:{eta % 60:02d} left" if eta >= 60 else f"{eta} s left"


def sync(job: RunningJob) -> None:
    """Copy the job's state into the scenes showing it (main thread)."""
    st = job.process.state
    for s in _scenes_for(str(job.process.workdir)):
        m = s.mvp4d
        m.stage = st.stage
        m.progress = st.fraction
        m.progress_text = f"{st.stage} {st.done}/{st.total}" if st.total else (st.stage or "starting")
        m.eta = _fmt_eta(st.eta_s)
        m.warnings = "\n".join(w[:200] for w in st.warnings[-5:])
        if st.preview and st.preview != m.preview_path:
            m.preview_path = st.preview
            load_preview(st.preview)


def load_preview(path: str) -> None:
    img = bpy.data.images.get(PREVIEW_IMAGE)
    try:
        if img is None:
            img = bpy.data.images.load(path)
            img.name = PREVIEW_IMAGE
        else:
            img.filepath = path
            img.reload()
        img.preview_ensure()
    except RuntimeError:
        pass


def start(process: BackendProcess, kind: str, scene, on_finish) -> RunningJob:
    job = RunningJob(process, kind, on_finish, time.time())
    _jobs[key(process.workdir)] = job
    m = scene.mvp4d
    m.job_dir, m.job_kind, m.status = str(process.workdir), kind, "RUNNING"
    m.stage, m.progress, m.progress_text, m.eta, m.last_error, m.last_hint = "", 0.0, "starting", "", "", ""
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=0.1, persistent=True)
    return job


def finisher_error(e: Exception, workdir: Path) -> JobError:
    """A finisher's exception as the user sees it: a user-facing error keeps its words and BAD_INPUT;
    anything unexpected is ``INTERNAL`` (a bug, not the artist's input) with its traceback in a log."""
    from .avatar import AvatarImportError
    from ..io.bundle import BundleError

    if isinstance(e, JobError):
        return e
    if isinstance(e, (AvatarImportError, BundleError)):
        return JobError("BAD_INPUT", str(e), "")
    import traceback

    log = workdir / "blender_error.log"
    try:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} Blender {bpy.app.version_string}\n")
            f.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
        where = f"the traceback is in {log}"
    except OSError:
        where = "the traceback is in Blender's console"
    return JobError("INTERNAL", f"{type(e).__name__}: {e}", f"This is a bug; please report it: {where}.")


def finish(job: RunningJob) -> tuple[str, str]:
    """Record the outcome in the scenes and run the job's finisher; returns (level, message)."""
    st = job.process.state
    _jobs.pop(key(job.process.workdir), None)
    sync(job)
    level, message = "INFO", "Done"
    if st.error is None and job.on_finish is not None:
        try:
            level, message = job.on_finish(job)
        except Exception as e:  # noqa: BLE001 - shown to the user; the finisher cleans up after itself
            st.error = finisher_error(e, Path(job.process.workdir))
    for s in _scenes_for(str(job.process.workdir)):
        m = s.mvp4d
        if st.error is None:
            m.status, m.progress, m.last_error, m.last_hint = "FINISHED", 1.0, "", ""
        else:
            m.status = "CANCELLED" if st.cancelled else "FAILED"
            m.last_error = f"[{st.error.code}] {st.error.message}"
            m.last_hint = st.error.hint or ""
    if st.error is not None:
        level, message = ("WARNING" if st.cancelled else "ERROR"), f"[{st.error.code}] {st.error.message}"
        if st.error.hint:
            message += f" - {st.error.hint}"
    common.tag_redraw()
    return level, message


def _notify(level: str, message: str) -> None:
    print(f"MVP4D: {message}")
    wm = bpy.context.window_manager
    if bpy.app.background or not getattr(wm, "windows", None):
        return

    def draw(menu, _ctx):
        menu.layout.label(text=message[:200])

    try:
        with bpy.context.temp_override(window=wm.windows[0]):
            wm.popup_menu(draw, title="MVP4D", icon="ERROR" if level == "ERROR" else "INFO")
    except (RuntimeError, TypeError):
        pass


def _tick():
    for job in list(_jobs.values()):
        job.process.poll()
        sync(job)
        if job.process.state.finished:
            level, message = finish(job)
            _notify(level, message)
    common.tag_redraw()
    return 0.25 if _jobs else None


def wait(job: RunningJob, timeout_s: float | None = None) -> tuple[str, str]:
    """Block until the job ends (``wait=True`` and ``blender -b``), keeping the scene status current."""
    job.process.wait(timeout_s, on_events=lambda _evs: sync(job))
    return finish(job)


def cancel(job_dir) -> bool:
    job = running(job_dir)
    if job is None:
        return False
    job.process.cancel()
    return True


@persistent
def _on_load_post(*_args):
    """Re-attach scenes to jobs still running, or mark them interrupted (Resume continues them)."""
    for s in bpy.data.scenes:
        m = getattr(s, "mvp4d", None)
        if m is None or m.status != "RUNNING" or not m.job_dir or running(m.job_dir):
            continue
        proc = None
        try:
            proc = BackendProcess.reattach(common.backend_python(), m.job_dir, backend_root=backend_link.backend_root(),
                                           proto=backend_link.protocol(), hang_timeout_s=common.hang_timeout())
        except Exception:  # noqa: BLE001 - a broken job folder just means "interrupted"
            proc = None
        if proc is None:
            m.status, m.last_error = "INTERRUPTED", "The job stopped when Blender closed."
            m.last_hint = "Click Resume to continue it where it stopped."
            continue
        kind = m.job_kind or "generate"
        job = RunningJob(proc, kind, _finisher_factory(kind, s) if _finisher_factory else None, time.time())
        _jobs[key(m.job_dir)] = job
        if not bpy.app.timers.is_registered(_tick):
            bpy.app.timers.register(_tick, first_interval=0.1, persistent=True)


def shutdown(wait_s: float = 3.0) -> None:
    """Stop every backend this Blender started (quit, unregister)."""
    procs = [j.process for j in _jobs.values()]
    for p in procs:
        p.cancel()
    deadline = time.monotonic() + wait_s
    for p in procs:
        if p.proc is None:
            continue
        try:
            p.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001
            p.kill()
    _jobs.clear()
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)


def register_handlers() -> None:
    if _on_load_post not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(_on_load_post)
    atexit.register(shutdown)


def unregister_handlers() -> None:
    if _on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load_post)
    atexit.unregister(shutdown)
    shutdown()
