"""The managed backend environment: ``python -m venv`` + ``pip install`` of the shipped backend.

Runs in a worker thread (never touching bpy) and reports ``(step, total, line)`` through a queue the
preferences drain with a timer. Resumable: each finished step leaves a stamp file in the environment
folder and is skipped next time (pip itself also skips what is already installed), so a failed or
interrupted install continues where it stopped. With an offline wheel folder pip gets
``--no-index --find-links FOLDER`` and never touches the network.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

#: the torch build the backend is tested with (Makefile); installed first, like `make install`
TORCH_REQUIREMENT = "torch==2.13.0"


def env_python(env_dir: str | Path) -> Path:
    env_dir = Path(env_dir)
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@dataclass
class InstallStep:
    name: str
    argv: list[str]
    stamp: str


def plan(env_dir: str | Path, base_python: str, backend_root: str | Path, wheel_dir: str = "") -> list[InstallStep]:
    """The commands of an install (also what the preferences show as "what will run")."""
    env_dir = Path(env_dir)
    py = str(env_python(env_dir))
    src = str(env_dir / "backend_src")
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    if wheel_dir:
        pip += ["--no-index", "--find-links", str(wheel_dir)]
    steps = [InstallStep("Create environment", [base_python, "-m", "venv", str(env_dir)], "venv")]
    if not wheel_dir:
        steps.append(InstallStep("Update pip", pip + ["--upgrade", "pip"], "pip"))
    steps += [
        InstallStep("Install torch", pip + [TORCH_REQUIREMENT], "torch"),
        InstallStep("Copy backend", ["<copy>", str(backend_root), src], "copy"),
        InstallStep("Install backend", pip + [src], "backend"),
        InstallStep("Check", [py, "-m", "backend", "doctor"], "doctor"),
    ]
    return steps


@dataclass
class Installer:
    env_dir: Path
    base_python: str
    backend_root: Path
    wheel_dir: str = ""
    messages: queue.Queue = field(default_factory=queue.Queue)
    thread: threading.Thread | None = None
    error: str = ""
    finished: bool = False
    _proc: subprocess.Popen | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "Installer":
        self.env_dir = Path(self.env_dir)
        self.env_dir.mkdir(parents=True, exist_ok=True)
        self.thread = threading.Thread(target=self._run, daemon=True, name="mvp4d-installer")
        self.thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()

    def _stamp(self, step: InstallStep) -> Path:
        return self.env_dir / f".mvp4d-step-{step.stamp}"

    def _run(self) -> None:
        steps = plan(self.env_dir, self.base_python, self.backend_root, self.wheel_dir)
        log = open(self.env_dir / "install.log", "a", encoding="utf-8")
        try:
            for i, step in enumerate(steps):
                if self._cancel.is_set():
                    raise RuntimeError("install cancelled; click Install backend again to continue")
                if self._stamp(step).exists() and step.stamp != "copy":
                    self.messages.put((i + 1, len(steps), f"{step.name}: already done"))
                    continue
                self.messages.put((i, len(steps), f"{step.name}..."))
                log.write(f"$ {' '.join(step.argv)}\n")
                if step.argv[0] == "<copy>":
                    dst = Path(step.argv[2])
                    shutil.rmtree(dst, ignore_errors=True)
                    shutil.copytree(Path(step.argv[1]) / "backend", dst / "backend",
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                    for f in ("pyproject.toml", "README.md"):
                        if (Path(step.argv[1]) / f).is_file():
                            shutil.copy2(Path(step.argv[1]) / f, dst / f)
                else:
                    self._call(step, i, len(steps), log)
                self._stamp(step).write_text("ok\n")
                self.messages.put((i + 1, len(steps), f"{step.name}: done"))
        except Exception as e:  # noqa: BLE001 - shown in the preferences with the log path
            self.error = f"{e} (log: {self.env_dir / 'install.log'})"
        finally:
            log.close()
            self.finished = True
            self.messages.put(None)

    def _call(self, step: InstallStep, i: int, n: int, log) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
        env["PYTHONNOUSERSITE"] = "1"
        self._proc = subprocess.Popen(step.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      encoding="utf-8", errors="replace", env=env, stdin=subprocess.DEVNULL)
        last = ""
        for line in self._proc.stdout:
            log.write(line)
            if line.strip():
                last = line.strip()
                self.messages.put((i, n, f"{step.name}: {last[:120]}"))
        rc = self._proc.wait()
        if rc != 0:
            raise RuntimeError(f"'{step.name}' failed (exit code {rc}): {last[:200]}")


def default_base_python() -> str:
    """Blender's own Python binary (3.11 for Blender 4.2-4.5, like the backend wants)."""
    exe = Path(sys.executable)
    if exe.name.lower().startswith("python"):
        return str(exe)
    found = shutil.which("python3.11") or shutil.which("python3")
    return found or str(exe)
