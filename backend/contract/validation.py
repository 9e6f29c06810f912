"""The job spec's bounds and the field checks behind every ``from_json``: each raises
:class:`~backend.errors.MVP4DError` (``BAD_INPUT``) naming the bad field; bounded JSON reading."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import SPEC_FIELD_HINT, MVP4DError, bad_input
from ..jobpaths import confine, split_rel


#: Bounds of the job spec: beyond these a value is a mistake, not a setting (docs/reliability.md, section 4).
MAX_IMAGE_SIDE = 8192
MAX_FRAMES = 100_000
MAX_CAMERAS = 1024
MAX_STEPS = 1000  # DDIM steps: the schedule has 1000 training timesteps
MAX_SEED = 2**32 - 1
MAX_JOB_JSON_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 64


def _obj(d: Any, where: str) -> dict:
    if not isinstance(d, dict):
        raise bad_input("must be a JSON object", SPEC_FIELD_HINT, where=where)
    return d


def _known(d: dict, cls: type, where: str) -> None:
    names = {f.name for f in fields(cls)}
    extra = sorted(set(d) - names)
    if extra:
        raise bad_input("is not a known field", SPEC_FIELD_HINT, where=f"{where}.{extra[0]}")


def _num(v: Any, where: str, *, positive: bool = False, minimum: float | None = None,
         maximum: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise bad_input(f"must be a finite number (got {_show(v)})", SPEC_FIELD_HINT, where=where)
    try:
        x = float(v)
    except OverflowError:  # an integer too large for a float
        raise bad_input("must be a finite number (got an integer too large)", SPEC_FIELD_HINT, where=where) from None
    if not math.isfinite(x):
        raise bad_input(f"must be a finite number (got {_show(v)})", SPEC_FIELD_HINT, where=where)
    if positive and x <= 0:
        raise bad_input(f"must be a positive number (got {_show(v)})", SPEC_FIELD_HINT, where=where)
    _check_range(x, v, where, minimum, maximum)
    return x


def _int(v: Any, where: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad_input(f"must be an integer (got {_show(v)})", SPEC_FIELD_HINT, where=where)
    _check_range(v, v, where, minimum, maximum)
    return v


def _check_range(x: float, v: Any, where: str, minimum: float | None, maximum: float | None) -> None:
    """``x`` (the value ``v`` as a number) within the optional bounds, else ``BAD_INPUT`` naming them."""
    if minimum is not None and x < minimum:
        raise bad_input(f"must be >= {minimum} (got {_show(v)})", SPEC_FIELD_HINT, where=where)
    if maximum is not None and x > maximum:
        raise bad_input(f"must be <= {maximum} (got {_show(v)})", SPEC_FIELD_HINT, where=where)


def _show(v: Any) -> str:
    """A short, one-line rendering of a bad value for an error message."""
    text = repr(v) if not isinstance(v, int) or isinstance(v, bool) or abs(v) < 10**30 else "a huge integer"
    return text if len(text) <= 60 else text[:57] + "..."


def _str(v: Any, where: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(v, str) or not v:
        raise bad_input(f"must be a non-empty string (got {_show(v)})", SPEC_FIELD_HINT, where=where)
    if any(ord(c) < 32 or ord(c) == 127 for c in v) or len(v) > 4096:
        raise bad_input("may not hold control characters (NUL, newline ...) or more than 4096 characters",
                        SPEC_FIELD_HINT, where=where)
    if choices is not None and v not in choices:
        raise bad_input(f"must be one of {', '.join(choices)} (got {_show(v)})", SPEC_FIELD_HINT, where=where)
    return v


@dataclass(frozen=True)
class Rule:
    """The type and range of one setting: the one way settings outside the fixed spec are declared.

    ``kind`` is ``int``, ``float``, ``bool`` or ``str``; ``lo``/``hi`` bound numbers (``open_lo``
    makes ``lo`` itself invalid, e.g. learning rates must be > 0); ``choices`` lists valid strings;
    ``optional`` allows ``null``. :meth:`check` raises ``BAD_INPUT`` naming ``where``.
    """

    kind: type
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    choices: tuple[str, ...] | None = None
    optional: bool = False

    def check(self, v: Any, where: str) -> Any:
        if v is None and self.optional:
            return None
        if self.kind is bool:
            if not isinstance(v, bool):
                raise bad_input(f"must be true or false (got {_show(v)})", SPEC_FIELD_HINT, where=where)
            return v
        if self.kind is str:
            return _str(v, where, self.choices)
        if self.kind is dict:
            return _obj(v, where)
        if self.kind is int:
            v = _int(v, where, maximum=None if self.hi is None else int(self.hi))
        else:
            v = _num(v, where, maximum=self.hi)
        if self.lo is not None and (v <= self.lo if self.open_lo else v < self.lo):
            raise bad_input(f"must be {'>' if self.open_lo else '>='} {self.lo} (got {_show(v)})", SPEC_FIELD_HINT,
                            where=where)
        return v


def check_rules(values: dict[str, Any], rules: dict[str, Rule], where: str) -> dict[str, Any]:
    """Check every value against its rule; a name without a rule is an unknown setting."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if k not in rules:
            raise MVP4DError("BAD_INPUT", f"{where}.{k} is not a known setting",
                             f"Known settings: {', '.join(sorted(rules))}.")
        out[k] = rules[k].check(v, f"{where}.{k}")
    return out


def _rel_path(v: Any, where: str) -> str:
    """A path relative to the job folder that cannot leave it: safe components only (lexical check)."""
    split_rel(v, where)
    return v


def _invertible3(m: list[list[float]]) -> bool:
    """Whether the upper-left 3x3 block of ``m`` is invertible, relative to its size (no numpy here)."""
    a = [r[:3] for r in m[:3]]
    det = (a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
           - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
           + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]))
    size = math.sqrt(sum(x * x for r in a for x in r) / 3.0)
    return math.isfinite(det) and size > 0 and abs(det) > 1e-9 * size**3


def check_device(dev: Any, where: str, *, allow_auto: bool) -> str:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` (and ``auto`` where allowed), else ``BAD_INPUT``."""
    dev = _str(dev, where)
    kind, _, index = dev.partition(":")
    ok = (kind in ("cpu", "cuda", "mps") and not index) or (kind == "cuda" and index.isdigit() and len(index) < 4)
    if not ok and not (allow_auto and dev == "auto"):
        raise bad_input(f"must be {'auto, ' if allow_auto else ''}cpu, cuda, cuda:N or mps (got {_show(dev)})",
                        SPEC_FIELD_HINT, where=where)
    return dev


def read_bounded(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The bytes of a small file, refusing one larger than ``limit`` before reading it."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise bad_input(f"{what} is larger than {limit // (1024 * 1024)} MB: not a file this program writes",
                        f"Check {path}.")
    return data


def parse_json(data: str | bytes, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON text (UTF-8 when bytes) -> value, or ``BAD_INPUT`` naming ``what``: bad encoding, bad syntax,
    nesting deeper than ``max_depth`` (checked without recursion, so no input can exhaust the stack)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise bad_input(f"{what} is not UTF-8 text (byte {e.start}: {e.reason})",
                            f"Save {what} as UTF-8 (the backend and the add-on write it so).") from None
    depth = deepest = 0
    in_str = esc = False
    for ch in data:  # bracket depth outside strings, before the (recursive) parser sees the text
        if in_str:
            esc, in_str = (False, True) if esc else (ch == "\\", ch != '"')
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                raise bad_input(f"{what} nests deeper than {max_depth} levels: not a file this program writes",
                                f"Check {what}.")
        elif ch in "]}":
            depth -= 1
    try:
        return json.loads(data)
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        raise bad_input(f"{what} is not valid JSON ({str(e)[:200]})", f"Rewrite {what}.") from None


def resolve_job_path(job_dir: str | os.PathLike, rel: str, where: str = "path") -> Path:
    """Resolve ``rel`` inside ``job_dir``; refuse anything (symlinks included) that leaves it."""
    return confine(job_dir, rel, where=where)
