"""job.json's ``executor``: how the corpus plan's units run (never what they compute). Pure Python."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import SPEC_FIELD_HINT, bad_input
from .validation import _int, _known, _num, _obj, _show, _str, check_device

EXECUTORS = ("local", "ray")


@dataclass
class ExecutorSpec:
    """How the corpus plan's units run (never what they compute: results do not depend on it).

    ``local``: one process, the plan in order. ``ray``: independent units as Ray tasks
    (:mod:`backend.executors`); ``ray_address`` None starts a Ray instance on this machine, ``auto`` or
    ``HOST:PORT`` joins a running cluster; each unit asks for ``gpus_per_unit`` GPUs. ``fit_device``:
    the fit stage's device (None: the fit settings'), or with Ray a task of its own (``fit_gpus``)."""

    name: str = "local"
    ray_address: str | None = None
    gpus_per_unit: float = 0.0
    retries: int = 1  # ray: reruns of a unit whose worker died (its checkpointed work is kept)
    fit_device: str | None = None
    fit_gpus: float = 0.0

    @classmethod
    def from_json(cls, d: Any, where: str = "executor") -> "ExecutorSpec":
        d = _obj(d, where)
        _known(d, cls, where)
        addr = d.get("ray_address")
        if addr is not None:
            addr = _str(addr, f"{where}.ray_address")
            if addr != "auto" and not re.fullmatch(r"(ray://)?[A-Za-z0-9.\-\[\]:]+:\d{1,5}", addr):
                raise bad_input(f"must be auto or HOST:PORT (got {_show(addr)})", SPEC_FIELD_HINT,
                                where=f"{where}.ray_address")
        dev = d.get("fit_device")
        if dev is not None:
            dev = check_device(dev, f"{where}.fit_device", allow_auto=False)
        return cls(name=_str(d.get("name", "local"), f"{where}.name", EXECUTORS), ray_address=addr,
                   gpus_per_unit=_num(d.get("gpus_per_unit", 0.0), f"{where}.gpus_per_unit", minimum=0.0),
                   retries=_int(d.get("retries", 1), f"{where}.retries", minimum=0, maximum=100),
                   fit_device=dev, fit_gpus=_num(d.get("fit_gpus", 0.0), f"{where}.fit_gpus", minimum=0.0))
