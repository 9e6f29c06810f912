"""Atomic file writes: nothing half-written ever sits under a final name.

Every file a stage produces goes through :func:`atomic_path` (write to a temporary name in the same
folder, fsync, then ``os.replace``), and whole folders through :func:`atomic_dir` (build under a
temporary name, then rename), so an interrupted job leaves either the complete result or nothing;
the temporaries an interrupted write leaves (``.NAME.XXXXXXXX.part``) are removed by
:func:`remove_partials` when the job runs next.

Nothing here deletes or overwrites what the backend did not make: :func:`atomic_dir` refuses an
existing non-empty folder unless its caller owns it, :func:`remove_inside` re-checks every deletion
against the folder it must stay in, and outputs the user names (``export --out``) go through
:func:`check_new_file` (no silent overwrite) and :func:`publish_dir` (only our own files swapped).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import MVP4DError
from .jobpaths import is_inside


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it into place, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary user files
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success it becomes ``path``.

    An existing ``path`` is never deleted to make room unless the caller owns it and says so with
    ``replace=True`` (a folder it wrote itself, e.g. a checkpoint of the same step): then the old
    folder is first renamed aside (a ``.part`` leftover if we are killed) and removed only once the
    new one is in place. Otherwise an existing non-empty ``path`` raises ``OUTPUT_EXISTS`` (an empty
    folder is simply taken over).
    """
    path = Path(path)
    if not replace:
        _refuse_existing(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        old = None
        if path.is_symlink() or path.exists():
            if not replace:
                _refuse_existing(path)
                path.rmdir()  # empty: nothing of anyone's is lost
            else:
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
                os.replace(path, old)  # onto the empty reserved name
        os.replace(tmp, path)
        if old is not None:
            remove_inside(old, path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _refuse_existing(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise MVP4DError("OUTPUT_EXISTS", f"{path} already exists and is not a folder",
                         "Choose another output path; nothing was changed.")
    if path.is_dir() and any(path.iterdir()):
        raise MVP4DError("OUTPUT_EXISTS", f"{path} already exists and is not empty",
                         "Choose an empty or new folder; nothing was changed.")


def remove_inside(path: str | os.PathLike, root: str | os.PathLike) -> None:
    """Delete ``path`` (a file, link or folder the backend made) after re-checking it lies inside ``root``.

    The check resolves the parent, not the entry: a link is removed as a link, never followed, and
    :func:`shutil.rmtree` does not follow links inside the folder either.
    """
    p = Path(path)
    base = Path(root).resolve()
    if p.name in ("", ".", "..") or not is_inside(p.parent.resolve(), base):
        raise MVP4DError("INTERNAL", f"refusing to delete {p}: it is not inside {base}")
    if p.is_symlink() or not p.is_dir():
        p.unlink(missing_ok=True)
    else:
        shutil.rmtree(p)


#: The names :func:`atomic_path` and :func:`atomic_dir` give their temporaries (tempfile's 8 random chars).
PARTIAL_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.part(\.[^./\\]*)?$")


def remove_partials(folder: str | os.PathLike, *, recursive: bool = False) -> int:
    """Delete leftovers of interrupted atomic writes (``.NAME.XXXXXXXX.part[.ext]``) in ``folder``
    (and its sub-folders when ``recursive``, never following links); return how many.

    Only call this on a folder no other process is writing (a job under its lock): a live writer's
    temporary looks the same as a dead one's.
    """
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return 0
    n = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        for name in [*dirnames, *filenames]:
            if PARTIAL_RE.match(name):
                remove_inside(here / name, folder)
                n += 1
        dirnames[:] = [d for d in dirnames if not PARTIAL_RE.match(d)] if recursive else []
    return n


# ---------------------------------------------------------------------------------------------
# Outputs the user names (``export --out``): never delete or overwrite what is not ours
# ---------------------------------------------------------------------------------------------

#: Written into every folder :func:`publish_dir` fills: which files in it are ours.
OUTPUT_MARKER = ".mvp4d-output.json"


def check_new_file(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse to write the file ``path`` over an existing entry unless ``overwrite`` (never over a folder).

    With ``overwrite`` the old file (or link: the link itself, never its target) is replaced
    atomically by :func:`atomic_path`, so it stays intact if the export fails.
    """
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        raise MVP4DError("OUTPUT_EXISTS", f"{p} is a folder; this export writes one file",
                         "Give a file name, e.g. OUT_DIR/avatar.ply; nothing was changed.")
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise MVP4DError("OUTPUT_EXISTS", f"{p} already exists",
                         "Choose another file name, or pass --overwrite to replace it; nothing was changed.")
    return p


def _owned_files(folder: Path) -> list[str] | None:
    """The files a previous :func:`publish_dir` put in ``folder`` (None: no valid marker: not ours)."""
    try:
        d = json.loads((folder / OUTPUT_MARKER).read_text(encoding="utf-8"))
        files = d["files"]
        if d.get("tool") == "mvp4d" and isinstance(files, list) and all(isinstance(f, str) for f in files):
            return [f for f in files if f and "/" not in f and "\\" not in f and f not in (".", "..")]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


@contextlib.contextmanager
def publish_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling of the folder ``path``; on success move its files into ``path``.

    * ``path`` missing or empty: the finished folder is renamed into place (complete or absent).
    * ``path`` holds our marker (:data:`OUTPUT_MARKER`) from an earlier export: our new files
      replace our old ones, old files of ours that the new export lacks are removed, and every
      file we did not write (e.g. the user's notes) is left alone.
    * any other non-empty folder: ``OUTPUT_EXISTS`` before any work, unless ``overwrite``; even then
      only files with our new files' names are replaced and nothing else is removed.

    Each file is replaced with ``os.replace`` (atomic); the marker lists old and new files while the
    swap runs, so an interrupted swap is still recognised as ours and finished by the next export.
    """
    path = Path(path)  # a link to a folder that the user names is that folder (their choice, like cp)
    if (path.is_symlink() and not path.exists()) or (path.exists() and not path.is_dir()):
        raise MVP4DError("OUTPUT_EXISTS", f"{path} already exists and is not a folder",
                         "Choose a folder path for this export; nothing was changed.")
    owned = _owned_files(path) if path.is_dir() else None
    foreign = [p.name for p in path.iterdir() if p.name != OUTPUT_MARKER] if path.is_dir() and owned is None else []
    if foreign and not overwrite:
        raise MVP4DError("OUTPUT_EXISTS", f"{path} is not empty and was not written by an export ({foreign[0]!r} ...)",
                         "Choose a new or empty folder, or pass --overwrite to add the export to it "
                         "(files with other names are kept); nothing was changed.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield tmp
        new = sorted(p.name for p in tmp.iterdir() if p.is_file() and p.name != OUTPUT_MARKER)
        if not path.exists():
            write_json_atomic(tmp / OUTPUT_MARKER, {"tool": "mvp4d", "files": new})
            os.chmod(tmp, 0o777 & ~_umask())
            os.replace(tmp, path)
            return
        old = owned or []
        write_json_atomic(path / OUTPUT_MARKER, {"tool": "mvp4d", "files": sorted(set(old) | set(new))})
        for name in new:
            if (path / name).is_dir() and not (path / name).is_symlink():
                raise MVP4DError("OUTPUT_EXISTS", f"{path / name} is a folder", "Remove or rename it and export again.")
            os.replace(tmp / name, path / name)
        for name in sorted(set(old) - set(new)):
            if (path / name).is_file() or (path / name).is_symlink():
                remove_inside(path / name, path)
        write_json_atomic(path / OUTPUT_MARKER, {"tool": "mvp4d", "files": new})
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output_folder(path: str | os.PathLike, ours: set[str] | frozenset[str]) -> Path:
    """Refuse (``OUTPUT_EXISTS``) a folder we are about to write fixed file names into unless it is
    missing, empty, or holds only entries with those names (an earlier run of the same command)."""
    p = Path(path)
    if (p.is_symlink() and not p.exists()) or (p.exists() and not p.is_dir()):
        raise MVP4DError("OUTPUT_EXISTS", f"{p} already exists and is not a folder",
                         "Choose a new or empty output folder; nothing was changed.")
    foreign = sorted(e.name for e in p.iterdir() if e.name not in ours and not PARTIAL_RE.match(e.name)) \
        if p.is_dir() else []
    if foreign:
        raise MVP4DError("OUTPUT_EXISTS", f"{p} is not empty and holds files this command did not write "
                         f"({foreign[0]!r} ...)", "Choose a new or empty output folder; nothing was changed.")
    return p
