"""Typed errors with stable codes: the one way the backend reports what went wrong.

Every failure a user can cause or fix is raised as an :class:`MVP4DError` carrying a stable
``code`` (listed in :data:`ERROR_CODES`), a one-line ``message`` saying what is wrong and a
``hint`` saying what to do. The CLI turns it into an ``error`` event and a non-zero exit;
the Blender add-on shows message and hint verbatim. Pure Python (no torch, no numpy) so the
add-on can import it through :mod:`backend.protocol`.
"""

from __future__ import annotations

# code -> default hint, used when the raiser gives none.
ERROR_CODES: dict[str, str] = {
    "BAD_INPUT": "Check the input named in the message and try again.",
    "NO_FACE": "Use a photo where one face is clearly visible, roughly frontal and not too small.",
    "FLAME_INVALID": (
        "Point to an unmodified FLAME 2020/2023/2023 Open .pkl, an .npz with the same keys, or use 'toy'."
    ),
    "WEIGHTS_MISSING": "Set the weights folder in the preferences or pass --weights DIR.",
    "WEIGHTS_MISMATCH": "The weights do not fit this model; rebuild them with the weight builder.",
    "WEIGHTS_INVALID": "The weights file is damaged or not a plain tensor file; download it again.",
    "FLAME_REQUIRED": (
        "This generator needs the real FLAME model (5,023 vertices): register at flame.is.tue.mpg.de, "
        "download FLAME 2023 and pass its .pkl with --flame (or set it in the add-on's preferences)."
    ),
    "OUT_OF_MEMORY": "Choose a lower VRAM preset or a smaller quality preset.",
    "CANCELLED": "Run the job again to resume where it stopped.",
    "JOB_LOCKED": "Another backend process is running this job; wait for it to finish or cancel it first.",
    "OUTPUT_EXISTS": "Choose a new output path, or pass --overwrite; nothing was changed.",
    "DISK_FULL": "Free disk space (or raise the quota) on the drive named in the message and run again.",
    "NOT_WRITABLE": "Choose a folder you can write to, or fix the permissions of the path named in the message.",
    "INTERNAL": "This is a bug; please report it with the log file named in the message.",
}

#: exit code used for each error (argparse/usage errors use 2 as usual)
EXIT_ERROR = 1
EXIT_CANCELLED = 130


class MVP4DError(Exception):
    """An error with a stable code, a one-line message and a hint for the user."""

    def __init__(self, code: str, message: str, hint: str | None = None):
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}; add it to backend.errors.ERROR_CODES")
        message = " ".join(str(message).split())  # one line, always
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint if hint is not None else ERROR_CODES[code]

    def __str__(self) -> str:
        return f"[{self.code}] {self.message} (hint: {self.hint})"


#: The hint of a bad field of the job spec (``job.json``), wherever it is checked.
SPEC_FIELD_HINT = "Fix that field of the job spec (job.json) and run again."


def bad_input(message: str, hint: str | None = None, *, where: str | None = None) -> MVP4DError:
    """The most common error, ``BAD_INPUT``: the one helper every module raises it with.

    ``where`` names what is at fault (a spec field, a file, a config) and leads the message:
    ``bad_input("must be a positive number", SPEC_FIELD_HINT, where="job.json: cameras.resolution")``.
    Without ``hint`` the code's default hint is used."""
    return MVP4DError("BAD_INPUT", message if where is None else f"{where} {message}", hint)


class Cancelled(MVP4DError):
    """Raised at the next safe point after a cancel request (SIGTERM, SIGINT or the cancel file)."""

    def __init__(self, message: str = "The job was cancelled.", hint: str | None = None):
        super().__init__("CANCELLED", message, hint)
