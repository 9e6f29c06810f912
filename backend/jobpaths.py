"""Confinement: the one way a path inside a job folder (or any folder we own) is derived.

Every name that comes from outside the code (a camera name in ``job.json``, a path in the spec, a
view folder listed in ``corpus.json``) becomes part of a path only through :func:`check_name` (one
safe path component) and :func:`confine` (a relative path under a root, resolved and checked to stay
inside it, with symbolic links that leave the root refused). A name that fails is a ``BAD_INPUT``
naming the field, raised before anything is written.

A safe name is what every filesystem we run on (Linux, macOS, Windows; case-insensitive ones too)
stores as one ordinary entry: not empty, not ``.`` or ``..``; no ``/``, ``\\``, ``:``, ``<>"|?*``,
control or invisible format characters, lone surrogates or NUL; not starting with ``.`` (hidden
names are where the backend keeps its temporaries, ``.NAME.XXXXXXXX.part``); not starting or ending
with a space, not ending with ``.`` (Windows silently drops those, so two names would meet); not a
Windows device name (``CON``, ``nul.txt``, ``COM1`` ...: job folders move between machines and the
backend runs on Windows too); at most :data:`MAX_NAME_BYTES` bytes of UTF-8 (room for the temporary
prefix and suffix under the usual 255-byte limit). Two names that differ only in case or Unicode
normalisation are the same folder on macOS and Windows: :func:`name_key` is what duplicates are
checked with.

Pure Python (the add-on imports it through :mod:`backend.protocol`).
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from pathlib import Path

from .errors import SPEC_FIELD_HINT, MVP4DError, bad_input

MAX_NAME_BYTES = 128
_FORBIDDEN = set('/\\:<>"|?*')
_BAD_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}  # control, format, surrogate, private, unassigned
_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$"} | {
    f"{p}{d}" for p in ("COM", "LPT") for d in "0123456789\u00b9\u00b2\u00b3"
}


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a safe single path component, or None when it is."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if name in (".", ".."):
        return f"may not be {name!r} (it would leave its folder)"
    for ch in name:
        if ch in _FORBIDDEN:
            return f"may not contain {ch!r} (got {name!r})"
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            return f"may not contain the control or invisible character U+{ord(ch):04X} (got {name!r})"
    if name.startswith("."):
        return f"may not start with '.' (names starting with '.' are reserved for temporary files; got {name!r})"
    if name != name.strip() or name.endswith("."):
        return f"may not start or end with a space or end with '.' (got {name!r})"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if name.split(".")[0].rstrip(" ").upper() in _DEVICES:
        return f"is a reserved device name on Windows (got {name!r})"
    return None


def check_name(name: object, where: str = "name") -> str:
    """``name`` if it is one safe path component (see the module docstring), else ``BAD_INPUT``."""
    problem = name_problem(name)
    if problem is not None:
        raise bad_input(problem, SPEC_FIELD_HINT, where=where)
    return name  # type: ignore[return-value]


def name_key(name: str) -> str:
    """What two names must differ in to be two folders everywhere (case, Unicode normalisation)."""
    return unicodedata.normalize("NFC", name).casefold()


def safe_name(name: str, fallback: str = "camera") -> str:
    """A safe name made from any string (for names we choose, e.g. from Blender object names)."""
    s = "".join("_" if (c in _FORBIDDEN or unicodedata.category(c) in _BAD_CATEGORIES) else c for c in str(name))
    s = re.sub(r"_+", "_", s).strip(" ._")
    while len(s.encode("utf-8")) > MAX_NAME_BYTES:
        s = s[:-1].rstrip(" .")
    if s and name_problem(s) is not None:  # a device name
        s = f"{s}_"
    return s if s and name_problem(s) is None else fallback


def split_rel(rel: object, where: str = "path") -> list[str]:
    """The components of a ``/``-separated relative path, each a safe name; ``BAD_INPUT`` otherwise."""
    if not isinstance(rel, str) or not rel:
        raise bad_input("must be a non-empty string", SPEC_FIELD_HINT, where=where)
    if rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel) or os.path.isabs(rel):
        raise bad_input(f"must be relative to the job folder (got {rel!r})", SPEC_FIELD_HINT, where=where)
    parts = rel.split("/")
    if any(p in ("..", ".") for p in parts):
        raise bad_input(f"may not leave the job folder (got {rel!r})", SPEC_FIELD_HINT, where=where)
    for p in parts:
        if p == "":
            raise bad_input(f"has an empty component (got {rel!r})", SPEC_FIELD_HINT, where=where)
        check_name(p, where)
    return parts


def is_inside(path: Path, root: Path) -> bool:
    """Whether the (resolved) ``path`` is ``root`` or lies under it."""
    return path == root or root in path.parents


def confine(root: str | os.PathLike, rel: str = "", *names: str, where: str = "path") -> Path:
    """``root/rel/names...``, refused unless it stays inside ``root``.

    ``rel`` is a ``/``-separated relative path (e.g. ``"stages/corpus/views"`` or a spec path);
    each of ``names`` must be a single safe component (a camera name is never split on ``/``).
    Every existing component that is a symbolic link must resolve inside ``root``; the whole path,
    resolved, must too. Returns the path under the resolved root, without following links inside it.
    """
    parts = (split_rel(rel, where) if rel else []) + [check_name(n, where) for n in names]
    try:
        base = Path(root).resolve()
        p = base
        for part in parts:
            p = p / part
            if p.is_symlink():
                target = p.resolve()
                if not is_inside(target, base):
                    raise bad_input(f"may not leave the job folder: {p} is a symbolic link to {target}",
                                    "Remove the link (the backend writes only inside the job folder).", where=where)
        full = p.resolve()
    except (RuntimeError, OSError) as e:  # symlink loop, name too long for this filesystem, ...
        raise bad_input(f"cannot be resolved inside {root}: {e}", "Remove the symbolic link loop or shorten the path.",
                        where=where) from e
    if not is_inside(full, base):
        raise bad_input(f"may not leave the job folder (resolves to {full})",
                        "Remove the link (the backend writes only inside the job folder).", where=where)
    return p




def check_own_file(path: Path, where: str) -> Path:
    """Refuse a file we append to or rewrite in place (``events.jsonl``, ``job.lock``) unless it is a
    regular file with no other hard links: the other names could be anyone's file, which the write
    would change too (links leaving the job were refused by :func:`confine` before)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path
    if not stat.S_ISREG(st.st_mode):  # a pipe would block the first write forever; a folder cannot be appended to
        raise MVP4DError("NOT_WRITABLE", f"{where} is not a regular file ({path}): it cannot be written",
                         f"Remove {path} (the backend makes a new one).")
    links = st.st_nlink
    if links > 1:
        raise bad_input(f"has {links - 1} other hard link(s); the backend writes only its own files",
                        f"Delete {path} (the backend makes a new one).", where=where)
    return path


def check_tree(root: str | os.PathLike) -> None:
    """Refuse (``BAD_INPUT`` naming it) any symbolic link under ``root`` that resolves outside it, and
    any entry that is neither a file, a folder nor a link (pipes, sockets, devices).

    Run on a job folder before a run: with no link leading out, every path derived inside the
    job by :func:`confine` or from fixed names stays inside it, however deep. Links that stay
    inside are allowed; links are never followed while walking.
    """
    base = Path(root).resolve()
    stack = [base]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_symlink():
                    rel = os.path.relpath(entry.path, base)
                    try:
                        target = Path(entry.path).resolve()
                    except (RuntimeError, OSError) as e:
                        raise bad_input(f"cannot be resolved ({e})", "Remove the symbolic link loop.", where=rel) from e
                    if not is_inside(target, base):
                        raise bad_input(f"may not leave the job folder: it is a symbolic link to {target}",
                                        "Remove the link (the backend reads and writes only inside the job folder).",
                                        where=rel)
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif not entry.is_file(follow_symlinks=False):  # a FIFO would hang a read or write forever
                    raise bad_input("is not a regular file or folder (a pipe, "
                                "socket or device)", "Remove it: a job folder holds only files and folders.",
                                    where=os.path.relpath(entry.path, base))


__all__ = ["MAX_NAME_BYTES", "name_problem", "check_name", "name_key", "safe_name", "split_rel", "confine",
           "is_inside", "check_own_file", "check_tree"]
