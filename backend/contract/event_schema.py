"""Events: the lines of ``events.jsonl`` and of the backend's stdout, one JSON object per line."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ERROR_CODES, SPEC_FIELD_HINT, MVP4DError, bad_input
from .validation import _int, _known, _obj, _str, parse_json


EVENT_TYPES = ("stage", "progress", "preview", "log", "warning", "error", "done")
STAGE_STATUSES = ("start", "end", "skip")


@dataclass
class Event:
    """One event. ``type`` picks which of the optional fields are required (see ``_REQUIRED``)."""

    type: str
    t: float = field(default_factory=time.time)
    stage: str | None = None
    status: str | None = None  # stage: start | end | skip
    done: int | None = None  # progress
    total: int | None = None  # progress
    eta_s: float | None = None  # progress; None when unknown
    path: str | None = None  # preview: job-relative image path
    message: str | None = None  # log, warning, error
    code: str | None = None  # error (ERROR_CODES), optional on warning
    hint: str | None = None  # error
    outputs: dict[str, str] | None = None  # done: name -> job-relative path

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls, d: Any) -> "Event":
        d = _obj(d, "event")
        _known(d, cls, "event")
        etype = _str(d.get("type"), "event.type", EVENT_TYPES)
        for k in _REQUIRED[etype]:
            if d.get(k) is None:
                raise bad_input("is missing", SPEC_FIELD_HINT, where=f"event({etype}).{k}")
        if etype == "stage":
            _str(d["status"], "event(stage).status", STAGE_STATUSES)
        if etype == "error":
            _str(d["code"], "event(error).code", tuple(ERROR_CODES))
        if etype == "progress":
            _int(d["done"], "event(progress).done", minimum=0)
            _int(d["total"], "event(progress).total", minimum=0)
        return cls(**d)

    @classmethod
    def loads(cls, line: str) -> "Event":
        try:
            return cls.from_json(parse_json(line, "event line"))
        except MVP4DError as e:
            raise MVP4DError("BAD_INPUT", f"{e.message}: {line[:80]!r}") from None


_REQUIRED: dict[str, tuple[str, ...]] = {
    "stage": ("stage", "status"),
    "progress": ("stage", "done", "total"),
    "preview": ("path",),
    "log": ("message",),
    "warning": ("message",),
    "error": ("code", "message", "hint"),
    "done": (),
}


def error_event(err: MVP4DError, stage: str | None = None) -> Event:
    return Event("error", stage=stage, code=err.code, message=err.message, hint=err.hint)
