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
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

#: the torch build the backend is tested with (Makefile); installed first, like `make install`
TORCH_REQUIREMENT = "torch==2.13.0"


class InterpreterError(ValueError):
    """No Python the backend supports: the message says what was found and exactly what to install."""


def supported_python(backend_root: str | Path) -> tuple[tuple[int, int], tuple[int, int]]:
    """(lowest, first unsupported) Python version from the backend's ``requires-python`` (pyproject.toml).

    One definition: the backend's own metadata, read as text (Blender's Python may lack ``packaging``);
    understands the ``>=X.Y,<X.Z`` form the project uses."""
    text = (Path(backend_root) / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(r'requires-python\s*=\s*"([^"]+)"', text)
    lo = re.search(r">=\s*(\d+)\.(\d+)", m.group(1)) if m else None
    hi = re.search(r"<\s*(\d+)\.(\d+)", m.group(1)) if m else None
    low = (int(lo.group(1)), int(lo.group(2))) if lo else (3, 11)
    high = (int(hi.group(1)), int(hi.group(2))) if hi else (low[0], low[1] + 1)
    return low, high


def python_version(exe: str, timeout: float = 30.0) -> tuple[int, int] | None:
    """``exe``'s (major, minor), or None when it is not a runnable Python."""
    try:
        out = subprocess.run([exe, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
                             capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        major, minor = out.stdout.split()
        return int(major), int(minor)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def _candidates(low: tuple[int, int]) -> list[str]:
    names = [f"python{low[0]}.{low[1]}", f"python{low[0]}", "python"]
    found = [sys.executable] if Path(sys.executable).name.lower().startswith("python") else []
    found += [p for p in (shutil.which(n) for n in names) if p]
    home = Path.home()
    for pattern in (f".pyenv/versions/{low[0]}.{low[1]}*/bin/python{low[0]}.{low[1]}",
                    f"AppData/Local/Programs/Python/Python{low[0]}{low[1]}/python.exe"):
        found += [str(p) for p in sorted(home.glob(pattern))]
    found += [f"/usr/bin/python{low[0]}.{low[1]}", f"/usr/local/bin/python{low[0]}.{low[1]}",
              f"/opt/homebrew/bin/python{low[0]}.{low[1]}"]
    return list(dict.fromkeys(p for p in found if Path(p).is_file()))


def choose_base_python(backend_root: str | Path, named: str = "") -> tuple[str, tuple[int, int]]:
    """The interpreter to build the environment with: ``named`` (the user's choice) or one found here.

    Raises :class:`InterpreterError` (before anything is installed) when the named one is unsupported
    or nothing suitable is found, saying which version is needed and how to get it."""
    low, high = supported_python(backend_root)
    want = f"Python {low[0]}.{low[1]}" + (f"-{high[0]}.{high[1] - 1}" if high != (low[0], low[1] + 1) else "")
    how = (f"Install {want} (python.org, or e.g. 'sudo apt install python{low[0]}.{low[1]} "
           f"python{low[0]}.{low[1]}-venv' / 'brew install python@{low[0]}.{low[1]}') and set it as Base Python "
           "in the MVP4D preferences, or pick Existing Python with an environment that has the backend")
    if named:
        v = python_version(named)
        if v is None:
            raise InterpreterError(f"Base Python '{named}' cannot be run. {how}")
        if not low <= v < high:
            raise InterpreterError(f"Base Python '{named}' is Python {v[0]}.{v[1]}; the backend needs {want}. {how}")
        return named, v
    seen = []
    for exe in _candidates(low):
        v = python_version(exe)
        if v is not None and low <= v < high:
            return exe, v
        if v is not None:
            seen.append(f"{exe} ({v[0]}.{v[1]})")
    found = f" Found only: {', '.join(seen)}." if seen else ""
    raise InterpreterError(f"No {want} found on this computer (Blender's own is "
                           f"{sys.version_info[0]}.{sys.version_info[1]}).{found} {how}")


def is_installed(env_dir: str | Path) -> bool:
    """True only when every install step finished, the final check included (never a half-installed env)."""
    return (Path(env_dir) / ".mvp4d-step-doctor").is_file() and env_python(env_dir).is_file()


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
        """Check the base interpreter first (raises :class:`InterpreterError`, nothing created), then install."""
        self.base_python, _version = choose_base_python(self.backend_root, self.base_python)
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


def default_base_python(backend_root: str | Path) -> str:
    """The base interpreter an install would use ('' when none is suitable: the preferences say why)."""
    try:
        return choose_base_python(backend_root)[0]
    except InterpreterError:
        return ""
