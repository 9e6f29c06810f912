"""Scaling model: the expected wall time of a preset's sampling plan on 1, 2, 4, 8 GPUs.

``python -m backend bench scaling [--gpu-json FILE] [--doc docs/benchmarks.md] [--json]``

* MMVDM: every pass of the real plan (:func:`backend.mmvdm.plan.build_plan` on the preset ring) costs
  ``steps × step seconds``, the step seconds measured by the GPU check (``sections.sampling``: one
  multi-view-CFG sampling step of 8 views × 13 latent frames at 512², sequential unconditional passes)
  scaled to the pass's own views × latent frames by the analytic forward FLOPs
  (:func:`backend.mmvdm.configs.forward_flops`). The passes are then list-scheduled on G identical GPUs
  along ``depends_on`` — exactly what the Ray executor does — with the longest remaining path first
  (critical-path priority), and the makespan is reported next to the two lower bounds (total work / G
  and the critical path).
* CAP4D: each step's groups are independent, steps are a barrier: ``steps × ⌈groups / G⌉ ×`` the
  measured seconds of one CFG forward of one group (``sections.cap4d``).

Not modelled (small next to sampling at 512²): VAE encode/decode per view, the model load of each
worker (once per worker), Ray's per-task overhead, and the shared-disk traffic of checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["list_schedule", "mmvdm_scaling", "cap4d_scaling", "scaling_report", "main"]

GPUS = (1, 2, 4, 8)
DEFAULT_GPU_JSON = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "gpu-2026-12-04.json"
BEGIN, END = "<!-- scaling-model:begin -->", "<!-- scaling-model:end -->"


def list_schedule(durations: dict[str, float], deps: dict[str, list[str]], order: list[str],
                  gpus: int) -> tuple[float, dict[str, tuple[int, float, float]]]:
    """Makespan of the DAG on ``gpus`` identical workers and each unit's (gpu, start, end).

    Greedy list scheduling: whenever a worker is free, it takes the ready unit with the longest
    remaining path to the end (ties: plan order)."""
    succ: dict[str, list[str]] = {u: [] for u in order}
    for u in order:
        for d in deps[u]:
            succ[d].append(u)
    rank: dict[str, float] = {}
    for u in reversed(order):  # plan order is topological
        rank[u] = durations[u] + max((rank[s] for s in succ[u]), default=0.0)
    free = [0.0] * gpus
    end: dict[str, float] = {}
    out: dict[str, tuple[int, float, float]] = {}
    left = list(order)
    while left:
        g = min(range(gpus), key=lambda i: free[i])
        ready = [u for u in left if all(d in end for d in deps[u])]
        # a unit whose inputs finish after this worker frees up may still be the best next choice
        start_of = {u: max([free[g], *(end[d] for d in deps[u])]) for u in ready}
        u = min(ready, key=lambda x: (start_of[x], -rank[x], order.index(x)))
        start = start_of[u]
        end[u] = start + durations[u]
        free[g] = end[u]
        out[u] = (g, start, end[u])
        left.remove(u)
    return max(end.values()), out


def mmvdm_scaling(preset: str, step_seconds: float, gpus: tuple[int, ...] = GPUS) -> dict[str, Any]:
    from ..cameras import ring_preset
    from ..mmvdm.configs import forward_flops, mmvdm_2b_config
    from ..mmvdm.plan import build_plan
    from ..protocol import PRESETS

    p = PRESETS[preset]
    plan = build_plan(ring_preset(preset), p.num_frames, 100, 50)
    cfg = mmvdm_2b_config()
    lat = p.resolution // 8
    base = forward_flops(cfg, 8, 13, lat, lat)["total"]
    dur = {q.id: q.steps * step_seconds * forward_flops(cfg, len(q.all_views), q.num_latent_frames, lat, lat)["total"]
           / base for q in plan}
    deps = {q.id: list(q.depends_on) for q in plan}
    order = [q.id for q in plan]
    work = sum(dur.values())
    _, sched1 = list_schedule(dur, deps, order, 1)
    crit = max(list_schedule(dur, deps, order, len(plan))[0], 0.0)
    rows = []
    for g in gpus:
        span, _ = list_schedule(dur, deps, order, g)
        rows.append({"gpus": g, "wall_s": round(span, 1), "speedup": round(work / span, 2),
                     "efficiency": round(work / span / g, 2), "bound_s": round(max(work / g, crit), 1)})
    return {"preset": preset, "passes": len(plan), "steps": sum(q.steps for q in plan), "frames": p.num_frames,
            "views": p.num_key_views + p.num_other_views, "work_s": round(work, 1), "critical_path_s": round(crit, 1),
            "rows": rows}


def cap4d_scaling(quality: str, views: int, group_seconds: float, gpus: tuple[int, ...] = GPUS,
                  references: int = 1, model_views: int = 8, max_refs: int = 4) -> dict[str, Any]:
    from ..protocol import CAP4D_QUALITY

    images, steps, _res = CAP4D_QUALITY[quality]
    targets = max(1, images // views) * views
    groups = math.ceil(targets / (model_views - min(references, max_refs)))
    work = steps * groups * group_seconds
    rows = [{"gpus": g, "wall_s": round(steps * math.ceil(groups / g) * group_seconds, 1),
             "speedup": round(groups / math.ceil(groups / g), 2)} for g in gpus]
    return {"quality": quality, "images": targets, "steps": steps, "groups_per_step": groups,
            "work_s": round(work, 1), "rows": rows}


def _measured(gpu_json: Path) -> dict[str, Any]:
    d = json.loads(gpu_json.read_text(encoding="utf-8"))
    sec = d["sections"]
    steps = {s["cfg_passes"]: s["seconds"] for s in sec["sampling"]["steps"] if s.get("status") == "ok"}
    cap = sec["cap4d"]["result"]
    return {"device": sec["device"].get("device_name", "?"), "date": d.get("date"),
            "step_s": float(steps.get("sequential") or min(steps.values())),
            "cap4d_forward_s": float(cap["seconds_per_forward"]), "source": gpu_json.name}


def scaling_report(gpu_json: Path = DEFAULT_GPU_JSON) -> dict[str, Any]:
    from ..protocol import CAP4D_QUALITY_FOR_PRESET, PRESETS

    m = _measured(gpu_json)
    report: dict[str, Any] = {"measured": m, "mmvdm": [], "cap4d": []}
    for preset in ("120", "360"):
        report["mmvdm"].append(mmvdm_scaling(preset, m["step_s"]))
        p = PRESETS[preset]
        report["cap4d"].append(cap4d_scaling(CAP4D_QUALITY_FOR_PRESET[preset], p.num_key_views + p.num_other_views,
                                             m["cap4d_forward_s"]))
    return report


def _h(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def markdown(report: dict[str, Any]) -> str:
    m = report["measured"]
    lines = [BEGIN, "",
             f"Computed by `python -m backend bench scaling --doc docs/benchmarks.md` from {m['source']} "
             f"({m['device']}): one MMVDM sampling step (8 views × 49 frames, 512², multi-view CFG) "
             f"{m['step_s']:.2f} s, one CAP4D group forward (CFG batched) {m['cap4d_forward_s'] * 1000:.0f} ms. "
             "Sampling only (VAE, model loads and Ray overheads not included).", "",
             "| plan | GPUs | wall time | speedup | efficiency | lower bound |", "|---|---|---|---|---|---|"]
    for r in report["mmvdm"]:
        for row in r["rows"]:
            lines.append(f"| MMVDM {r['preset']}° ({r['passes']} passes, {r['steps']} steps) | {row['gpus']} | "
                         f"{_h(row['wall_s'])} | {row['speedup']:.2f}× | {row['efficiency']:.0%} | {_h(row['bound_s'])} |")
    for r in report["cap4d"]:
        for row in r["rows"]:
            lines.append(f"| CAP4D {r['quality']} ({r['images']} images, {r['groups_per_step']} groups × "
                         f"{r['steps']} steps) | {row['gpus']} | {_h(row['wall_s'])} | {row['speedup']:.2f}× | "
                         f"{row['speedup'] / row['gpus']:.0%} | {_h(r['work_s'] / row['gpus'])} |")
    crit = {r["preset"]: r["critical_path_s"] for r in report["mmvdm"]}
    lines += ["", "The MMVDM plans stop scaling at their critical path (key pass of window 0 → key extension → "
              "the last window's cluster): " + ", ".join(f"{p}° {_h(s)}" for p, s in crit.items()) +
              ". Past that, extra GPUs only help other jobs (or the fit, `--fit-gpus`).", "", END]
    return "\n".join(lines)


def write_doc(doc: Path, text: str) -> None:
    """Replace the block between the markers in ``doc`` (append it under a heading when absent)."""
    from ..fsutil import atomic_path

    old = doc.read_text(encoding="utf-8")
    if BEGIN in old and END in old:
        new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _m: text, old, flags=re.S)
    else:
        new = old.rstrip("\n") + "\n\n## Scaling model: the plans on 1, 2, 4 and 8 GPUs\n\n" + text + "\n"
    with atomic_path(doc) as tmp:
        Path(tmp).write_text(new, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend bench scaling", description=__doc__.splitlines()[0])
    p.add_argument("--gpu-json", type=Path, default=DEFAULT_GPU_JSON, help="a GPU check result (docs/benchmarks/)")
    p.add_argument("--doc", type=Path, default=None, help="write the table into this Markdown file")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = p.parse_args(argv)
    report = scaling_report(args.gpu_json)
    text = markdown(report)
    if args.doc is not None:
        write_doc(args.doc, text)
    print(json.dumps(report, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
