"""The local executor: every unit in this process, in the plan's order (the reference behaviour)."""

from __future__ import annotations

from typing import Any

from .units import run_mmvdm_pass

__all__ = ["LocalExecutor"]


class LocalExecutor:
    name = "local"

    def run_mmvdm_stage(self, runner: Any, tag: str, plan: list, factor: int, output: bool) -> None:
        """The passes of one MMVDM stage in plan order (an executable order: dependencies first)."""
        for p in plan:
            done0 = runner.done
            run_mmvdm_pass(runner, tag, plan, p, factor, progress=lambda d, base=done0: runner._set_done(base + d))
            if output:
                runner.finish_views(tag, p.views, factor)

    def close(self) -> None:
        pass
