"""Executors: how the corpus plan's units of work run — in this process (``local``) or as Ray tasks
(``ray``) on several GPUs or hosts. Both run the same unit functions
(:func:`backend.generators.mmvdm_passes.run_mmvdm_pass`, the CAP4D sampler's ``_guided_eps``), read and write the
same per-unit checkpoints in the job folder, and give the same result for the same seed.

Torch-free at import (the add-on reads :data:`~backend.protocol.EXECUTORS` through the protocol).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..protocol import ExecutorSpec

__all__ = ["make_executor"]


def make_executor(spec: ExecutorSpec | None, cancel_file: str | Path | None = None) -> Any:
    """The executor for ``spec`` (None: local). ``cancel_file``: the job's cancel file, which Ray
    workers watch themselves (the driver also cancels their tasks)."""
    if spec is None or spec.name == "local":
        from .local import LocalExecutor

        return LocalExecutor()
    from .ray_executor import RayExecutor

    return RayExecutor(spec, cancel_file=cancel_file)
