"""Job folders and the backend process, without bpy (the Blender side only copies state into the UI).

:func:`write_job` writes a job folder exactly as docs/design.md defines it (``job.json`` validated through
``backend.protocol.JobSpec``, inputs copied under ``inputs/``). :class:`BackendProcess` starts
``<python> -m backend ...`` with the shipped backend on ``PYTHONPATH``; a reader thread parses each
stdout line with ``protocol.Event.loads`` into a queue that the main thread drains with
:meth:`BackendProcess.poll` (Blender's timer), so nothing here ever touches bpy. A backend that exits
without a final event, or stays silent longer than ``hang_timeout_s``, is reported and stopped.
A small ``blender_backend.json`` in the job folder (pid, where this run's events start) lets a
reopened .blend re-attach to a job that is still running (:meth:`BackendProcess.reattach`).
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

PID_FILE = "blender_backend.json"  # protocol.ADDON_RUN_FILE: the backend accepts it in its output folders
#: error codes the add-on itself raises (the backend's own are in backend/errors.py)
ADDON_ERRORS = {
    "BACKEND_MISSING": "Set the backend Python in the MVP4D preferences, or click 'Install backend' there.",
    "BACKEND_CRASHED": "Look at the job's log (stderr lines above); run Generate again to resume.",
    "BACKEND_HUNG": "The backend was stopped. Run Generate again to resume where it stopped.",
}


class JobError(Exception):
    """A failure to report to the user: ``code`` (backend or add-on code), ``message``, ``hint``."""

    def __init__(self, code: str, message: str, hint: str = ""):
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint or ADDON_ERRORS.get(code, "")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_job(job_dir: str | Path, proto: ModuleType, *, image: str | Path, spec: dict[str, Any],
              animation: dict[str, np.ndarray] | None = None,
              flame_params: dict[str, np.ndarray] | None = None) -> Any:
    """Create (or reuse, when it holds the same spec) a job folder; returns the ``JobSpec``.

    ``spec`` is ``job.json`` without the input paths, which are filled in here: the image is copied
    to ``inputs/reference.<ext>``, ``animation``/``flame_params`` arrays are written as ``.npz``.
    Raises :class:`JobError` ``BAD_INPUT`` with the protocol's message for an invalid spec.
    """
    job_dir = Path(job_dir)
    src = Path(image)
    if not src.is_file():
        raise JobError("BAD_INPUT", f"the reference image {src} does not exist", "Pick an image file.")
    spec = json.loads(json.dumps(spec))  # deep copy, JSON values only
    spec.setdefault("inputs", {})["reference_image"] = f"inputs/reference{src.suffix.lower() or '.png'}"
    if flame_params is not None:
        spec["inputs"]["flame_params"] = "inputs/flame_params.npz"
    if animation is not None:
        spec.setdefault("animation", {})["source"] = "inputs/animation.npz"
    spec["schema_version"] = proto.SCHEMA_VERSION
    try:
        job = proto.JobSpec.from_json(spec)
    except Exception as e:  # MVP4DError from the private backend package
        raise JobError(getattr(e, "code", "INTERNAL"), getattr(e, "message", f"{type(e).__name__}: {e}"),
                       getattr(e, "hint", "This is a bug; please report it.")) from e
    if (job_dir / "job.json").is_file():
        old = proto.JobSpec.load(job_dir)
        if old.to_json() != job.to_json():
            raise JobError("BAD_INPUT", f"{job_dir} already holds a different job",
                           "Choose an empty output folder (or clear the Output field for a new one).")
        return old
    if job_dir.exists() and any(job_dir.iterdir()):
        raise JobError("BAD_INPUT", f"{job_dir} is not empty and holds no job", "Choose an empty output folder.")
    (job_dir / "inputs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, job_dir / job.inputs.reference_image)
    if flame_params is not None:
        np.savez(job_dir / "inputs" / "flame_params.npz", **{k: np.asarray(v, np.float32) for k, v in flame_params.items()})
    if animation is not None:
        np.savez(job_dir / "inputs" / "animation.npz", **{k: np.asarray(v, np.float32) for k, v in animation.items()})
    _atomic_write(job_dir / "job.json", job.dumps() + "\n")
    return job


@dataclass
class JobState:
    """What the UI shows, folded from the events: the latest of each."""

    stage: str = ""
    done: int = 0
    total: int = 0
    eta_s: float | None = None
    preview: str = ""  # absolute path of the latest preview image
    log: str = ""
    warnings: list[str] = field(default_factory=list)
    error: JobError | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    finished: bool = False
    cancelled: bool = False

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


class BackendProcess:
    """One running ``python -m backend <args>``; :meth:`poll` from the main thread."""

    def __init__(self, python: str, args: list[str], *, workdir: str | Path, backend_root: str | Path,
                 proto: ModuleType, env: dict[str, str] | None = None, hang_timeout_s: float = 600.0):
        self.python, self.args, self.workdir = str(python), list(args), Path(workdir)
        self.backend_root, self.proto, self.extra_env = str(backend_root), proto, dict(env or {})
        self.hang_timeout_s = float(hang_timeout_s)
        self.state = JobState()
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self._queue: queue.Queue = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._last_activity = time.monotonic()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._cancel_sent_at: float | None = None
        self._saw_final = False

    # ---- starting ------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP")}
        env["PYTHONPATH"] = self.backend_root
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    def start(self) -> "BackendProcess":
        py = Path(self.python)
        if not self.python or not py.is_file() or not os.access(py, os.X_OK):
            raise JobError("BACKEND_MISSING", f"the backend Python '{self.python}' does not exist or cannot run")
        self.workdir.mkdir(parents=True, exist_ok=True)
        events = self.workdir / "events.jsonl"
        offset = events.stat().st_size if events.is_file() else 0
        kw: dict[str, Any] = {"start_new_session": True} if os.name == "posix" else {
            "creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
        try:
            self.proc = subprocess.Popen([self.python, "-m", "backend", *self.args], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=str(self.workdir),
                                         env=self._env(), text=True, encoding="utf-8", errors="replace",
                                         bufsize=1, **kw)
        except OSError as e:
            raise JobError("BACKEND_MISSING", f"cannot start the backend Python '{self.python}' ({e.strerror})") from e
        self.pid = self.proc.pid
        _atomic_write(self.workdir / PID_FILE, json.dumps({"pid": self.pid, "events_offset": offset,
                                                           "args": self.args, "started": time.time()}))
        self._spawn(self._read_stdout)
        self._spawn(self._read_stderr)
        return self

    @classmethod
    def reattach(cls, python: str, workdir: str | Path, *, backend_root: str | Path, proto: ModuleType,
                 hang_timeout_s: float = 600.0) -> "BackendProcess | None":
        """Follow a backend started by an earlier Blender session, if it is still running."""
        workdir = Path(workdir)
        try:
            info = json.loads((workdir / PID_FILE).read_text(encoding="utf-8"))
            pid, offset = int(info["pid"]), int(info.get("events_offset", 0))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not _is_our_backend(pid, workdir):
            return None
        bp = cls(python, info.get("args", []), workdir=workdir, backend_root=backend_root, proto=proto,
                 hang_timeout_s=hang_timeout_s)
        bp.pid = pid
        bp._spawn(lambda: bp._tail_events(workdir / "events.jsonl", offset))
        return bp

    def _spawn(self, fn) -> None:
        t = threading.Thread(target=fn, daemon=True, name="mvp4d-backend-reader")
        t.start()
        self._threads.append(t)

    # ---- reader threads (never touch bpy) ---------------------------------------------------------
    def _parse(self, line: str) -> None:
        self._last_activity = time.monotonic()
        line = line.strip()
        if not line.startswith("{"):
            if line:
                self._stderr.append(line)
            return
        try:
            self._queue.put(self.proto.Event.loads(line))
        except Exception:  # noqa: BLE001 - a malformed line is kept for the crash report, not fatal
            self._stderr.append(line[:300])

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._parse(line)
        self._queue.put(None)  # end of stream

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._last_activity = time.monotonic()
            if line.strip():
                self._stderr.append(line.rstrip())

    def _tail_events(self, path: Path, offset: int) -> None:
        pos = offset
        while not self._stop.is_set():
            alive = _pid_alive(self.pid)  # checked before reading, so the last lines are never missed
            try:
                with open(path, "rb") as fh:  # bytes: a line torn inside a UTF-8 character must not stop us
                    fh.seek(pos)
                    for raw in fh:
                        if not raw.endswith(b"\n"):
                            break  # incomplete last line: read it again next time
                        pos += len(raw)
                        self._parse(raw.decode("utf-8", errors="replace"))
            except OSError:
                pass
            if not alive:
                self._queue.put(None)
                return
            time.sleep(0.2)

    # ---- main thread ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return not self.state.finished

    def poll(self) -> list[Any]:
        """Drain new events into :attr:`state`; detect exit, crash and hangs. Main thread only."""
        events: list[Any] = []
        ended = False
        while True:
            try:
                ev = self._queue.get_nowait()
            except queue.Empty:
                break
            if ev is None:
                ended = True
                continue
            events.append(ev)
            self._apply(ev)
        if self.state.finished:
            return events
        # a re-attached job (no pipe) ends when its tail thread has read the last lines of a dead pid
        alive = self.proc.poll() is None if self.proc is not None else not ended
        if (ended or not alive) and self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for t in self._threads:
                t.join(timeout=2)
            while not self._queue.empty():  # lines read while we waited
                ev = self._queue.get_nowait()
                if ev is not None:
                    events.append(ev)
                    self._apply(ev)
        if self.state.finished:
            return events
        if not alive or ended:
            code = self.proc.returncode if self.proc is not None else None
            tail = " | ".join(list(self._stderr)[-3:])
            self._finish(JobError("BACKEND_CRASHED", f"the backend stopped without finishing (exit code {code})"
                                  + (f": {tail}" if tail else "")))
        elif self._cancel_sent_at is not None and time.monotonic() - self._cancel_sent_at > 15.0:
            self.kill()
            self._finish(JobError("CANCELLED", "the job was cancelled (the backend was stopped)",
                                  "Run Generate again to resume where it stopped."), cancelled=True)
        elif time.monotonic() - self._last_activity > self.hang_timeout_s:
            self.kill()
            self._finish(JobError("BACKEND_HUNG", f"the backend reported nothing for {self.hang_timeout_s:.0f} s"))
        return events

    def _apply(self, ev: Any) -> None:
        st = self.state
        if ev.type == "stage":
            st.stage = ev.stage or st.stage
            if ev.status == "start":
                st.done, st.total, st.eta_s = 0, 0, None
        elif ev.type == "progress":
            st.stage, st.done, st.total, st.eta_s = ev.stage, ev.done, ev.total, ev.eta_s
        elif ev.type == "preview":
            st.preview = str(self.workdir / ev.path)
        elif ev.type == "log":
            st.log = ev.message
        elif ev.type == "warning":
            st.warnings.append(ev.message)
        elif ev.type == "error":
            self._saw_final = True
            self._finish(JobError(ev.code, ev.message, ev.hint or ""), cancelled=ev.code == "CANCELLED")
        elif ev.type == "done":
            self._saw_final = True
            st.outputs = {k: str(self.workdir / v) for k, v in (ev.outputs or {}).items()}
            self._finish(None)

    def _finish(self, error: JobError | None, cancelled: bool = False) -> None:
        self.state.error, self.state.finished, self.state.cancelled = error, True, cancelled
        self._stop.set()
        try:
            (self.workdir / PID_FILE).unlink()
        except OSError:
            pass

    def cancel(self) -> None:
        """Ask the backend to stop at its next safe point: the ``cancel`` file plus SIGTERM."""
        if self.state.finished:
            return
        try:
            (self.workdir / "cancel").write_text("cancelled from Blender\n", encoding="utf-8")
        except OSError:
            pass
        self._signal(signal.SIGTERM)
        self._cancel_sent_at = time.monotonic()

    def kill(self) -> None:
        self._signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        try:
            if self.proc is not None:
                if self.proc.poll() is None:
                    self.proc.send_signal(sig)
            elif self.pid and _is_our_backend(self.pid, self.workdir):
                os.kill(self.pid, sig)
        except (OSError, ProcessLookupError):
            pass

    def wait(self, timeout_s: float | None = None, interval: float = 0.1, on_events=None) -> JobState:
        """Block until the job ends (``wait=True`` and ``blender -b``); ``on_events`` sees each batch."""
        t0 = time.monotonic()
        while not self.state.finished:
            evs = self.poll()
            if on_events is not None and evs:
                on_events(evs)
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                self.cancel()
                timeout_s = None
            time.sleep(interval)
        return self.state


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _is_our_backend(pid: int, workdir: Path) -> bool:
    """True if ``pid`` runs ``-m backend`` (checked where /proc exists) and is alive."""
    if not _pid_alive(pid):
        return False
    cmd = Path(f"/proc/{pid}/cmdline")
    if sys.platform.startswith("linux") and cmd.exists():
        try:
            args = cmd.read_bytes().split(b"\0")
        except OSError:
            return False
        return b"backend" in args
    return True
