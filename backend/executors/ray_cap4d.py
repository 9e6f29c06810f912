"""CAP4D on the Ray executor: every denoising step's groups (:class:`~backend.cap4d.sampler.StochasticIOSampler`)
are independent units; each runs as a Ray task through the sampler's own ``_guided_eps`` (the same
function the local path calls) in a worker that built the UNet once. The driver keeps the random
groupings, the DDIM update and the per-step checkpoint, so results are the local ones bit for bit on
CPU and a lost worker costs its group of the current step only."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CAP4DWork", "cap4d_group_task", "cap4d_groups"]

_POLL_S = 0.2


@dataclass
class CAP4DWork:
    """What a worker needs for the groups of one sampling run (shipped once)."""

    key: str
    weights: Path | None
    settings: Any  # CAP4DSettings with the worker's device
    components: Any  # in-memory components (tests) when there is no weights folder; else None
    sampler_settings: Any
    inputs: tuple  # (reference latents, reference maps, target maps) on the CPU
    cancel_file: Path | None


_WORKER_SAMPLER: dict[str, Any] = {}


def _worker_sampler(work: CAP4DWork) -> tuple[Any, tuple]:
    if work.key not in _WORKER_SAMPLER:
        _WORKER_SAMPLER.clear()
        from ..cap4d.sampler import StochasticIOSampler
        from ..generators.cap4d import CAP4DGenerator

        device = work.settings.resolved_device()
        comp = CAP4DGenerator(work.weights, work.settings, components=work.components)._load(device, lambda _m: None)
        _WORKER_SAMPLER[work.key] = (StochasticIOSampler(comp.unet, work.sampler_settings),
                                     tuple(t.to(device) for t in work.inputs))
    return _WORKER_SAMPLER[work.key]


def cap4d_group_task(work: CAP4DWork, x: Any, t: int, targets: np.ndarray, refs: np.ndarray) -> tuple[int, Any]:
    """A Ray task: (worker pid, ε of one batch of groups of one step, CFG applied, on the CPU)."""
    from ..events import CancelToken

    if work.cancel_file is not None:
        CancelToken(work.cancel_file).check()
    sampler, (ref_latents, ref_maps, target_maps) = _worker_sampler(work)
    dev = ref_latents.device
    return os.getpid(), sampler._guided_eps(x.to(dev), t, targets, refs, ref_latents, ref_maps, target_maps).cpu()


def cap4d_groups(executor: Any, gen: Any, sampler_settings: Any, inputs: tuple) -> Any:
    """The ``groups`` callable of :meth:`StochasticIOSampler.sample` running each batch as a Ray task."""
    ray = executor.ray
    executor.connect()
    executor.require_gpus(executor.spec.gpus_per_unit, "each CAP4D group")
    work = ray.put(CAP4DWork(key=f"{os.getpid()}-{id(gen)}-{id(inputs)}", weights=gen.weights,
                             settings=replace(gen.settings, device=executor.unit_device()),
                             components=gen.components if gen.weights is None else None,
                             sampler_settings=sampler_settings, inputs=tuple(t.cpu() for t in inputs),
                             cancel_file=executor.cancel_file))
    task = ray.remote(cap4d_group_task).options(num_cpus=1, num_gpus=executor.spec.gpus_per_unit,
                                                max_retries=executor.spec.retries, retry_exceptions=False)

    def groups(x, t, batches, check) -> list:
        x_ref = ray.put(x.cpu())
        refs = [task.remote(work, x_ref, t, tg, rf) for tg, rf in batches]
        try:
            pending = list(refs)
            while pending:
                _ready, pending = ray.wait(pending, num_returns=len(pending), timeout=_POLL_S)
                check()
            out = []
            for i, r in enumerate(refs):
                try:
                    pid, eps = ray.get(r)
                except Exception as e:  # noqa: BLE001 - as the job's typed error
                    raise executor._unit_error(e, f"CAP4D group batch {i} at t={t}") from None
                executor.last_pids[f"cap4d-t{t}-b{i}"] = pid
                out.append(eps)
            return out
        except BaseException:
            for r in refs:
                ray.cancel(r, force=True)
            raise

    return groups
