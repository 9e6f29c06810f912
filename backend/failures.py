"""Any exception -> a typed :class:`~backend.errors.MVP4DError`: the one place that decides what a failure means.

Every entry point (the CLI's guard, the job runner, the event sink) hands what it caught to
:func:`classify`, so the same fault gets the same code everywhere:

* an :class:`OSError` becomes ``DISK_FULL`` (no space, quota), ``NOT_WRITABLE`` (read-only file system,
  permission denied) or ``BAD_INPUT`` (missing file, a folder where a file was expected, a symlink
  loop, a name that is too long ...), always naming the path the system named;
* a path with a NUL byte or characters the file system cannot encode, input nested too deeply to read
  (``RecursionError``) and text that is not UTF-8 are ``BAD_INPUT``;
* ``MemoryError`` and torch's ``OutOfMemoryError`` are ``OUT_OF_MEMORY``; a missing third-party
  package is ``BAD_INPUT`` pointing at ``doctor``;
* anything else is a bug: ``INTERNAL``, with the traceback written to a log file whose path is in the
  message (the job's ``logs/`` folder when there is a job, else ``<tmp>/mvp4d-logs/``), never on the
  console. Pure Python (no torch, no numpy).
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
import traceback
from pathlib import Path

from .errors import MVP4DError, bad_input

#: errno -> error code for faults of the machine rather than of the input.
_STORAGE_CODES: dict[int, str] = {
    errno.ENOSPC: "DISK_FULL",
    errno.EDQUOT: "DISK_FULL",
    errno.EFBIG: "DISK_FULL",
    errno.EROFS: "NOT_WRITABLE",
    errno.EACCES: "NOT_WRITABLE",
    errno.EPERM: "NOT_WRITABLE",
    errno.ETXTBSY: "NOT_WRITABLE",
}

#: errno -> what is wrong with a path the user gave (BAD_INPUT).
_PATH_PROBLEMS: dict[int, str] = {
    errno.ENOENT: "does not exist",
    errno.ENOTDIR: "has a part that is not a folder",
    errno.EISDIR: "is a folder where a file is expected",
    errno.ELOOP: "is a symbolic link loop (or has too many levels of links)",
    errno.ENAMETOOLONG: "has a name that is too long for the file system",
    errno.EEXIST: "already exists",
    errno.ENOTEMPTY: "is a folder that is not empty",
    errno.EXDEV: "is on another drive than the job",
    errno.EINVAL: "is not a valid name on this file system",
    errno.EILSEQ: "has characters the file system cannot store",
}

_STORAGE_MESSAGES = {"DISK_FULL": "the disk is full", "NOT_WRITABLE": "not allowed"}

LOG_DIR_NAME = "logs"


def _path_of(exc: OSError, path: str | os.PathLike | None) -> str:
    name = exc.filename if exc.filename is not None else path
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    text = str(name) if name is not None else "a file"
    return text if len(text) <= 300 else text[:150] + "..." + text[-100:]


def os_error(exc: OSError, path: str | os.PathLike | None = None) -> MVP4DError:
    """An :class:`OSError` as a typed error naming the path (``path`` when the exception names none)."""
    where = _path_of(exc, path)
    reason = exc.strerror or type(exc).__name__
    code = _STORAGE_CODES.get(exc.errno or 0)
    if code is not None:
        return MVP4DError(code, f"{where}: {_STORAGE_MESSAGES[code]} ({reason})")
    problem = _PATH_PROBLEMS.get(exc.errno or 0)
    if problem is not None:
        return bad_input(f"{where} {problem}", "Check the path named in the message and try again.")
    return bad_input(f"{where}: {reason} (errno {exc.errno})",
                     "Check the path named in the message, the drive it is on and try again.")


def write_internal_log(exc: BaseException, log_dir: str | os.PathLike | None = None) -> Path | None:
    """Write ``exc``'s traceback to a new file in ``log_dir`` (else ``<tmp>/mvp4d-logs``); its path or None."""
    text = "".join(traceback.format_exception(exc))
    name = f"internal-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    candidates = [Path(log_dir)] if log_dir is not None else []
    candidates.append(Path(tempfile.gettempdir()) / "mvp4d-logs")
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            with open(path, "x", encoding="utf-8") as f:
                f.write(text)
            return path
        except (OSError, ValueError):
            continue
    return None


def job_log_dir(job_dir: str | os.PathLike | None) -> Path | None:
    """The job's ``logs/`` folder when ``job_dir`` is an existing folder (else None: use the temp folder)."""
    try:
        return Path(job_dir) / LOG_DIR_NAME if job_dir is not None and Path(job_dir).is_dir() else None
    except (OSError, ValueError):
        return None


def classify(exc: BaseException, *, log_dir: str | os.PathLike | None = None) -> MVP4DError:
    """What ``exc`` means to the user (see the module docstring). Only ``INTERNAL`` writes a log."""
    if isinstance(exc, MVP4DError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        from .errors import Cancelled

        return Cancelled("The job was cancelled (interrupted).")
    if isinstance(exc, MemoryError):
        return MVP4DError("OUT_OF_MEMORY", "ran out of memory")
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError without importing torch
        return MVP4DError("OUT_OF_MEMORY", f"GPU out of memory: {str(exc)[:300]}")
    if isinstance(exc, OSError):
        return os_error(exc)
    if isinstance(exc, ModuleNotFoundError) and exc.name and not exc.name.startswith("backend"):
        return bad_input(f"the Python package {exc.name!r} is not installed in the backend's environment",
                         "Run 'python -m backend doctor' and install what it lists as missing.")
    if isinstance(exc, RecursionError):
        return bad_input("an input is nested too deeply to read (maximum recursion depth exceeded)",
                         "Check the JSON or header of the file you passed; it is not one this program writes.")
    if isinstance(exc, UnicodeDecodeError):
        return bad_input(f"a text file is not UTF-8 ({exc.reason} at byte {exc.start})",
                         "Save the file as UTF-8 text and try again.")
    if isinstance(exc, UnicodeEncodeError):
        return bad_input("a path or name has characters that cannot be encoded on this system",
                         "Rename the file or folder using ordinary characters.")
    if isinstance(exc, ValueError) and "null" in str(exc) and "embedded" in str(exc):
        return bad_input("a path contains a NUL byte", "Pass the path without the NUL (\\0) character.")
    log = write_internal_log(exc, log_dir)
    where = f" (traceback in {log})" if log is not None else " (no log could be written)"
    hint = f"This is a bug; please report it with {log}." if log is not None else None
    return MVP4DError("INTERNAL", f"{type(exc).__name__}: {str(exc)[:300]}{where}", hint)
