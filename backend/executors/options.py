"""The executor's command-line options (``generate``, ``corpus``, ``run``), torch-free."""

from __future__ import annotations

import argparse

from ..protocol import EXECUTORS, ExecutorSpec

__all__ = ["add_executor_options", "executor_spec", "executor_args"]


def add_executor_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("executor (how units run; results do not change)")
    g.add_argument("--executor", default=None, choices=list(EXECUTORS),
                   help="local: this process (default); ray: the plan's independent units as Ray tasks")
    g.add_argument("--ray-address", default=None,
                   help="ray: 'auto' or HOST:PORT of a running cluster (default: start Ray on this machine)")
    g.add_argument("--gpus-per-unit", type=float, default=None, help="ray: GPUs each unit asks for (default 0 = CPU)")
    g.add_argument("--fit-device", default=None, help="the fit stage's device (cpu, cuda, cuda:N; default: auto)")
    g.add_argument("--fit-gpus", type=float, default=None,
                   help="ray: the fit stage as a Ray task of its own with this many GPUs (default 0: in this process)")


def executor_spec(args: argparse.Namespace) -> ExecutorSpec | None:
    """The options as an :class:`ExecutorSpec` (validated like job.json), None when none was given."""
    given = {k: getattr(args, a, None) for k, a in (("name", "executor"), ("ray_address", "ray_address"),
                                                    ("gpus_per_unit", "gpus_per_unit"), ("fit_device", "fit_device"),
                                                    ("fit_gpus", "fit_gpus"))}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return None
    if "name" not in given and ({"ray_address", "gpus_per_unit", "fit_gpus"} & set(given)):
        given["name"] = "ray"  # a Ray option alone means the Ray executor
    return ExecutorSpec.from_json(given, "--executor options")


def executor_args(spec: ExecutorSpec) -> list[str]:
    """The command-line options that give ``spec`` (the add-on passes its preferences this way)."""
    out = ["--executor", spec.name]
    if spec.ray_address:
        out += ["--ray-address", spec.ray_address]
    if spec.gpus_per_unit:
        out += ["--gpus-per-unit", f"{spec.gpus_per_unit:g}"]
    if spec.fit_device:
        out += ["--fit-device", spec.fit_device]
    if spec.fit_gpus:
        out += ["--fit-gpus", f"{spec.fit_gpus:g}"]
    return out
