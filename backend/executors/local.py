"""The local executor: every unit in this process, in the plan's order (the reference behaviour)."""

from __future__ import annotations

from typing import Any

__all__ = ["LocalExecutor"]


class LocalExecutor:
    name = "local"

    def run_mmvdm_stage(self, runner: Any, tag: str, plan: list, factor: int, output: bool) -> None:
        """The passes of one MMVDM stage in plan order, here (``PassRunner.run_stage_here``)."""
        runner.run_stage_here(tag, plan, factor, output)

    def close(self) -> None:
        pass
