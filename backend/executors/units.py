"""Units of work of the corpus generators — ONE definition each, run by every executor.

An MMVDM unit is one plan pass (:class:`~backend.mmvdm.plan.Pass`): sample it unless its checkpoint
``<state>/<pass id>.safetensors`` exists, checkpoint its latents atomically, then decode and write its
generated frames. Everything a unit reads (reference latents of its dependencies, context frames of its
own views) comes from the job folder, so a unit runs the same in the driver process or in a Ray worker
on another host that sees the job folder, and a unit lost with its worker is simply run again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["run_mmvdm_pass", "mmvdm_stage_sampler"]


def mmvdm_stage_sampler(settings: Any, tag: str) -> str:
    """The sampler of a stage's passes: the preview stage and the preview sampler's refinement are joint."""
    return "joint" if (tag == "preview" or settings.sampler == "preview") else settings.sampler


def run_mmvdm_pass(runner: Any, tag: str, plan: list, p: Any, factor: int,
                   progress: Callable[[int], None]) -> bool:
    """Run pass ``p`` of ``plan`` for ``runner`` (a :class:`~backend.generators.mmvdm_passes.PassRunner`).

    ``progress(d)``: steps of this pass done so far (0 … ``runner.pass_steps(tag, p)``). Returns True
    when the pass was sampled, False when its checkpoint already existed (only lost frames rewritten).
    """
    from ..generators.mmvdm_passes import _load_latents, _save_latents, pass_seed
    from ..mmvdm.sampler import sample

    s = runner.s
    path = runner.ckpt(tag, p)
    n_steps = runner.pass_steps(tag, p)
    if path.is_file():
        runner.write_frames(tag, p, _load_latents(path))  # no-op unless frames were lost
        progress(n_steps)
        return False
    if runner.check is not None:
        runner.check()
    t0 = time.time()
    kw = runner.inputs(tag, plan, p, factor)
    runner.g._use("transformer")
    lat = sample(runner.g.transformer, kw.pop("latents_shape"), **kw, steps=p.steps, guidance=s.guidance,
                 seed=pass_seed(s.seed, ("preview-" if tag == "preview" else "") + p.id),
                 sampler=mmvdm_stage_sampler(s, tag),
                 strength=s.refine_strength if kw["init_latents"] is not None else 1.0,
                 progress=lambda d, _t: progress(d), check=runner.check,
                 sub_batch=1 if s.cfg_passes == "sequential" else None, scheduler=runner.g.scheduler,
                 device=runner.g.device)
    own = lat[len(p.reference_views):]
    _save_latents(path, own, {"pass": p.to_json(), "stage": tag})
    progress(n_steps)
    runner.log(f"MMVDM {tag} pass {p.id} (mode {p.mode}, {len(p.views)} views + {len(p.reference_views)} "
               f"references, frames {p.frames[0]}-{p.frames[1] - 1}) took {time.time() - t0:.1f} s")
    runner.write_frames(tag, p, own)
    return True
