"""One process per job: an exclusive lock on ``job.lock`` while a job is created or run.

Two ``run`` (or ``generate``) commands on the same folder would write the same checkpoints and
delete each other's temporaries; the second one therefore refuses at once with ``JOB_LOCKED``,
naming the process that holds the job, and writes nothing (not even to ``events.jsonl``).

The lock is an operating-system lock on an open file (``flock`` on POSIX, ``msvcrt.locking`` on
Windows), not the file's existence: the system drops it when its process ends in any way (crash,
``kill -9``, power loss), so a stale lock of a dead process never blocks a job; the file itself
stays and only tells who held it last. On filesystems without locks (some network mounts) the
recorded process id is checked instead: a live process on this host keeps the job, a dead one
does not.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from .errors import MVP4DError
from .jobpaths import check_own_file, confine

LOCK_NAME = "job.lock"

try:  # POSIX
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 1 << 20, os.SEEK_SET)  # a byte past the holder's note, so others can still read it
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EDEADLK):
                return False
            raise

    def _unlock(fd: int) -> None:
        os.lseek(fd, 1 << 20, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def read_holder(job_dir: str | os.PathLike) -> dict:
    """What the last holder wrote into ``job.lock`` (pid, host, since); {} when unreadable."""
    try:
        d = json.loads((Path(job_dir) / LOCK_NAME).read_text(encoding="utf-8") or "{}")
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


class JobLock:
    """``with JobLock(job_dir):`` holds the job or raises ``JOB_LOCKED`` without waiting."""

    def __init__(self, job_dir: str | os.PathLike):
        self.job_dir = Path(job_dir)
        self.path = confine(self.job_dir, LOCK_NAME, where=LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> "JobLock":
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o666)
        except OSError as e:  # read-only folder or full disk: NOT_WRITABLE / DISK_FULL naming the lock file
            from .failures import os_error

            raise os_error(e, self.path) from e
        try:
            check_own_file(self.path, LOCK_NAME)  # it is rewritten in place: no other names for it
        except MVP4DError:
            os.close(fd)
            raise
        try:
            locked = _try_lock(fd)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            holder = read_holder(self.job_dir)  # no locks on this filesystem: trust a live recorded pid
            locked = not (holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
                          and holder["pid"] != os.getpid() and _pid_alive(holder["pid"]))
        if not locked:
            os.close(fd)
            holder = read_holder(self.job_dir)
            who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}" if holder else "another process"
            raise MVP4DError("JOB_LOCKED", f"the job {self.job_dir} is being run by {who}",
                             "Wait for that run to finish, or stop it (a file named 'cancel' in the job "
                             "folder, or SIGTERM to that process), then run again.")
        note = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}) + "\n"
        try:  # who holds it: for messages only, so a full disk here is reported where it matters (the log)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, note.encode("utf-8"))
        except OSError:
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                _unlock(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> "JobLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


__all__ = ["LOCK_NAME", "JobLock", "read_holder"]
