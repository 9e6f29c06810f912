"""The Ray executor: the plan's independent units as Ray tasks on the GPUs of one machine or a cluster.

How an MMVDM stage runs (:meth:`RayExecutor.run_mmvdm_stage`):

* the driver (the backend process that owns the job, its lock and its event log) submits every pass
  whose ``depends_on`` are finished — the key pass of window 0 first, then its clusters and the next
  key extension together, each cluster of a later window as soon as its window's key pass and its own
  previous window exist (the plan's dependency graph, no barrier per window);
* a task is :func:`backend.generators.mmvdm_passes.run_mmvdm_pass`, the same function the local
  executor runs, in a worker that builds the generator once (weights loaded from the same folder, or the
  driver's in-memory components for tests) and reads/writes the job folder's per-pass checkpoints —
  so every worker must see the job folder and the weights folder at the same paths (a shared disk);
* workers report steps to a small progress actor; the driver sums them into the job's one progress
  event stream and writes the workers' log lines to the job's log; a finished pass's complete views
  are written by the driver;
* cancel (the job's cancel file or a signal to the driver): workers check the cancel file between
  steps, and the driver force-cancels every task in flight (their processes are killed) at once;
* CAP4D (:mod:`.ray_cap4d`): each denoising step's groups are the units, the driver keeps the step;
* a worker that dies (crash, lost node) costs its unit only: Ray reruns it ``retries`` times; after
  that the stage fails with ``WORKER_LOST`` once the other units in flight have finished, and a rerun
  of the job redoes just the units without a checkpoint.

Results are the local executor's bit for bit on CPU: a pass's noise comes from ``(seed, pass id)`` and
its inputs only from checkpoints, never from the order passes ran in.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import Cancelled, MVP4DError
from ..protocol import ExecutorSpec

__all__ = ["RayExecutor", "import_ray"]

_POLL_S = 0.2


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise MVP4DError("EXECUTOR_UNAVAILABLE", "the ray executor needs Ray, which is not installed") from e
    return ray


@dataclass
class MMVDMWork:
    """What a worker needs to build the driver's :class:`PassRunner` (shipped once per stage)."""

    key: str
    weights: Path | None
    settings: Any
    components: Any  # in-memory components (tests) when there is no weights folder; else None
    worker_args: dict[str, Any]
    cancel_file: Path | None


#: the runner a worker built for the last work it saw (model loaded once per worker and job)
_WORKER_RUNNER: dict[str, Any] = {}


def _worker_runner(work: MMVDMWork) -> Any:
    if work.key not in _WORKER_RUNNER:
        _WORKER_RUNNER.clear()
        from ..generators.mmvdm import MMVDMGenerator
        from ..generators.mmvdm_passes import PassRunner

        gen = MMVDMGenerator(work.weights, work.settings, components=work.components)
        gen._load(work.settings.resolved_device(), lambda _m: None)
        _WORKER_RUNNER[work.key] = PassRunner(gen, check=None, log=None, **work.worker_args)
    return _WORKER_RUNNER[work.key]


def mmvdm_unit_task(work: MMVDMWork, tag: str, plan: list, index: int, factor: int, board: Any) -> dict[str, Any]:
    """A Ray task: one MMVDM pass (the unit) in a worker. Returns its log lines for the driver."""
    from ..events import CancelToken
    from ..generators.mmvdm_passes import run_mmvdm_pass

    runner = _worker_runner(work)
    logs: list[str] = []
    runner.log = logs.append
    runner.check = CancelToken(work.cancel_file).check if work.cancel_file else None
    p, pid = plan[index], os.getpid()
    board.report.remote(p.id, 0, pid)
    sampled = run_mmvdm_pass(runner, tag, plan, p, factor, progress=lambda d: board.report.remote(p.id, d, pid))
    return {"id": p.id, "sampled": sampled, "logs": logs, "pid": pid}


def call_task(fn: Any, args: tuple, kwargs: dict, unit: str, cancel_file: Path | None, board: Any) -> tuple[Any, list]:
    """A Ray task: ``fn(*args, **kwargs, progress=, check=, log=)`` in a worker — a unit of its own such
    as the avatar fit (:meth:`RayExecutor.run_call`). Returns its value and its log lines."""
    from ..events import CancelToken

    logs: list[str] = []
    pid = os.getpid()
    board.report.remote(unit, 0, pid)
    value = fn(*args, **kwargs, progress=lambda d, t: board.report.remote(unit, d, pid, t),
               check=CancelToken(cancel_file).check if cancel_file else None, log=logs.append)
    return value, logs


class _ProgressBoard:
    """A Ray actor: steps done per unit (and the worker pid running it), summed by the driver."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}
        self.pids: dict[str, int] = {}
        self.totals: dict[str, int] = {}

    def report(self, unit: str, done: int, pid: int, total: int | None = None) -> None:
        self.steps[unit] = int(done)
        self.pids[unit] = int(pid)
        if total is not None:
            self.totals[unit] = int(total)

    def total(self, unit: str) -> int | None:
        return self.totals.get(unit)

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        return dict(self.steps), dict(self.pids)


class RayExecutor:
    name = "ray"

    def __init__(self, spec: ExecutorSpec, cancel_file: str | Path | None = None):
        self.ray = import_ray()
        self.spec = spec
        self.cancel_file = None if cancel_file is None else Path(cancel_file)
        self._owns = False
        self.last_pids: dict[str, int] = {}

    # -- the cluster ------------------------------------------------------------------------------
    def connect(self) -> None:
        """Join the cluster at ``ray_address`` or start a Ray instance on this machine (stopped by close)."""
        ray = self.ray
        if ray.is_initialized():
            return
        addr = self.spec.ray_address
        try:
            if addr:
                ray.init(address=addr, log_to_driver=False, logging_level=logging.ERROR)
            else:  # stdout carries the job's JSON events only: Ray's own messages stay quiet
                ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
                self._owns = True
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise MVP4DError("EXECUTOR_UNAVAILABLE", f"cannot start or reach the Ray cluster "
                             f"{addr or '(local)'}: {str(e).splitlines()[0][:200]}") from e

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
            self._owns = False

    def require_gpus(self, gpus: float, what: str) -> None:
        """``EXECUTOR_UNAVAILABLE`` now instead of a task that waits forever for GPUs the cluster lacks."""
        have = float(self.ray.cluster_resources().get("GPU", 0.0))
        if gpus > have:
            raise MVP4DError("EXECUTOR_UNAVAILABLE", f"{what} asks for {gpus:g} GPU(s) but the Ray cluster has "
                             f"{have:g}", "Lower --gpus-per-unit/--fit-gpus or add GPU nodes to the cluster.")

    def unit_device(self) -> str:
        """A unit's torch device inside its worker: its Ray-assigned GPU (``cuda``) or the CPU."""
        return "cuda" if self.spec.gpus_per_unit > 0 else "cpu"

    # -- one call as a unit of its own (the fit) ---------------------------------------------------
    def run_call(self, fn: Any, args: tuple, kwargs: dict, *, unit: str, gpus: float, progress: Any, check: Any,
                 log: Any) -> Any:
        """``fn`` as one Ray task with ``gpus`` GPUs (on whichever node has them free), its progress,
        log lines and cancel handled like a plan unit's; returns its value."""
        ray = self.ray
        self.connect()
        self.require_gpus(gpus, f"the {unit} unit")
        board = ray.remote(num_cpus=0)(_ProgressBoard).remote()
        ref = ray.remote(call_task).options(num_cpus=1, num_gpus=gpus, max_retries=self.spec.retries,
                                            retry_exceptions=False).remote(fn, args, kwargs, unit, self.cancel_file,
                                                                           board)
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=_POLL_S)
                if check is not None:
                    check()
                steps, self.last_pids = ray.get(board.snapshot.remote())
                total = ray.get(board.total.remote(unit))
                if progress is not None and total and unit in steps:
                    progress(steps[unit], total)
                if ready:
                    break
            try:
                value, logs = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - as the job's typed error
                raise self._unit_error(e, unit) from None
        except BaseException:
            ray.cancel(ref, force=True)
            raise
        finally:
            ray.kill(board)
        for line in logs:
            log(line)
        return value

    # -- CAP4D --------------------------------------------------------------------------------------
    def cap4d_groups(self, gen: Any, sampler_settings: Any, inputs: tuple) -> Any:
        """Each sampling step's groups as Ray tasks (:mod:`.ray_cap4d`)."""
        from .ray_cap4d import cap4d_groups

        return cap4d_groups(self, gen, sampler_settings, inputs)

    # -- MMVDM ------------------------------------------------------------------------------------
    def _work(self, runner: Any) -> MMVDMWork:
        g = runner.g
        return MMVDMWork(key=f"{os.getpid()}-{id(runner)}-{runner.state_dir}", weights=g.weights,
                         settings=replace(g.settings, device=self.unit_device()),
                         components=g.components if g.weights is None else None,
                         worker_args=runner.worker_args, cancel_file=self.cancel_file)

    def run_mmvdm_stage(self, runner: Any, tag: str, plan: list, factor: int, output: bool) -> None:
        ray = self.ray
        self.connect()
        self.require_gpus(self.spec.gpus_per_unit, "each MMVDM unit")
        work = ray.put(self._work(runner))
        board = ray.remote(num_cpus=0)(_ProgressBoard).remote()
        task = ray.remote(mmvdm_unit_task).options(num_cpus=1, num_gpus=self.spec.gpus_per_unit,
                                                   max_retries=self.spec.retries, retry_exceptions=False)
        index = {p.id: i for i, p in enumerate(plan)}
        base, done, inflight = runner.done, set(), {}
        error: BaseException | None = None
        shown = -1
        try:
            while len(done) < len(plan):
                if error is None:
                    running = set(inflight.values())
                    for p in plan:
                        if p.id not in done and p.id not in running and all(d in done for d in p.depends_on):
                            inflight[task.remote(work, tag, plan, index[p.id], factor, board)] = p.id
                if not inflight:
                    break
                ready, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=_POLL_S)
                if runner.check is not None:
                    runner.check()  # the driver's cancel token: the except below stops every worker
                for ref in ready:
                    unit = inflight.pop(ref)
                    try:
                        res = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - the first failure ends the stage
                        error = error or self._unit_error(e, unit)
                        continue
                    for line in res["logs"]:
                        runner.log(line)
                    done.add(unit)
                    if output:
                        runner.finish_views(tag, plan[index[unit]].views, factor)
                steps, self.last_pids = ray.get(board.snapshot.remote())
                now = base + sum(steps.values())  # a retried unit restarts at 0: progress never goes back
                if now > shown:
                    runner._set_done(now)
                    shown = now
            if error is not None:
                raise error
        except BaseException:
            for ref in inflight:
                ray.cancel(ref, force=True)
            raise
        finally:
            ray.kill(board)
        runner._set_done(base + sum(runner.pass_steps(tag, p) for p in plan))

    def _unit_error(self, e: BaseException, unit: str) -> BaseException:
        """A task's failure as the job's error: the worker's own typed error, or ``WORKER_LOST``."""
        ray = self.ray
        cause = getattr(e, "cause", None)
        if isinstance(cause, (MVP4DError, Cancelled)):
            return cause
        if isinstance(e, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                          ray.exceptions.TaskCancelledError, ray.exceptions.LocalRayletDiedError)):
            return MVP4DError("WORKER_LOST", f"the Ray worker running unit {unit} stopped "
                              f"({type(e).__name__}) after {self.spec.retries} retr{'y' if self.spec.retries == 1 else 'ies'}")
        if cause is not None:
            return cause
        return e
