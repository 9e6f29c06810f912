"""Head models for the rig builder: the shipped toy head, or a FLAME file converted once by the backend.

FLAME ``.pkl`` files need the backend's restricted unpickler (and its scipy), so the backend
interpreter writes the model as a plain ``.npz`` (``python -m backend.blender_support export-flame``)
into the add-on's user folder, keyed by the file's path, size and time; later rigs load it instantly.
The toy head is written into the extension zip at build time, so "Add FLAME rig" works before any
backend is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path

from .. import backend_link
from ..io.flame import FlameArrays, FlameFileError, load_flame_npz
from ..io.jobs import JobError
from . import common

SHIPPED_TOY = backend_link.PACKAGE_DIR / "data" / "toy_head.npz"


def _cache_key(source: str) -> str:
    if source == "toy":
        return "toy"
    st = os.stat(source)
    h = hashlib.sha256(f"{os.path.abspath(source)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return f"{Path(source).stem}-{h}"


def model_npz(source: str, python: str | None = None, timeout: float = 600.0) -> Path:
    """Path of a plain-npz version of ``source`` (``toy`` or a FLAME file), converting it if needed."""
    if source == "toy" and SHIPPED_TOY.is_file():
        return SHIPPED_TOY
    if source != "toy" and not os.path.isfile(source):
        raise JobError("BAD_INPUT", f"the FLAME file {source} does not exist",
                       "Set an existing FLAME .pkl/.npz in the preferences (or clear it for the toy head).")
    out = common.user_dir("models") / f"{_cache_key(source)}.npz"
    if out.is_file():
        return out
    python = python or common.backend_python()
    if not python or not os.path.isfile(python):
        raise JobError("BACKEND_MISSING", f"converting {source} needs the backend, and its Python '{python}' "
                       "is not there")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    env["PYTHONPATH"] = str(backend_link.backend_root())
    tmp = out.with_name(out.stem + ".part.npz")
    try:
        proc = subprocess.run([python, "-m", "backend.blender_support", "export-flame", source, str(tmp)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise JobError("BACKEND_CRASHED", f"the backend could not convert {source} ({e})") from e
    if proc.returncode != 0 or not tmp.is_file():
        for line in proc.stdout.splitlines():
            if line.startswith("{") and '"error"' in line:
                ev = json.loads(line)
                raise JobError(ev.get("code", "FLAME_INVALID"), ev.get("message", ""), ev.get("hint", ""))
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise JobError("BACKEND_CRASHED", f"converting {source} failed: {tail}")
    tmp.replace(out)
    return out


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> FlameArrays:
    return load_flame_npz(path)


def load_model(npz: str | Path) -> FlameArrays:
    """Read (and memoise) a model npz; :class:`FlameFileError` names what is wrong."""
    p = Path(npz)
    if not p.is_file():
        raise FlameFileError(f"the head model file {p} is missing; add the rig again")
    return _load(str(p), p.stat().st_mtime)


def model_of_rig(rig) -> FlameArrays | None:
    """The model a rig was built from (None when its npz is gone)."""
    path = rig.get("mvp4d_model_npz", "")
    try:
        return load_model(path) if path else None
    except FlameFileError:
        return None
