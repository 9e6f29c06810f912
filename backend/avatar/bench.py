"""``python -m backend bench fit --preset P``: how fast and how well the avatar fit runs here.

:func:`run_bench` builds the embedded default job (astronaut photo, toy head, projection generator)
for the preset in a temporary folder, fits it on the even frames and measures, on held-out cameras
(inside the ring's range, not in it) and the held-out odd frames, against the projection generator's
own renders: iterations per second, seconds until the PSNR bar is first reached, final PSNR, peak
memory. Evaluation time is excluded from the timings. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import MVP4DError

#: held-out PSNR bar (dB) per preset: the bar the tests hold the CPU presets to
PSNR_BAR = {"tiny": 22.0, "preview": 24.0, "120": 24.0, "360": 24.0}


def _build_job(root: Path, preset: str) -> Path:
    from ..events import EventSink
    from ..jobs import create_job, run_job
    from ..protocol import CamerasSpec, InputsSpec, JobSpec
    from ..tracking.image import default_reference_image, save_png_atomic

    image = root / "astronaut.png"
    save_png_atomic(image, default_reference_image())
    job = root / "job"
    create_job(job, image, JobSpec(inputs=InputsSpec(reference_image=""), cameras=CamerasSpec(preset=preset)))
    sink = EventSink(job / "events.jsonl", stream=None)
    if run_job(job, until="corpus", sink=sink) != 0:  # re-raise the job's own typed error, not a bug
        err = next((e for e in reversed(sink.history) if e.type == "error"), None)
        if err is not None and err.code:
            raise MVP4DError(err.code, f"building the benchmark corpus failed: {err.message}", err.hint)
        raise RuntimeError(f"building the benchmark corpus failed (see {job / 'events.jsonl'})")
    return job


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def run_bench(preset: str = "tiny", iterations: int | None = None, device: str | None = None,
              eval_every: int | None = None, job_dir: str | Path | None = None) -> dict[str, Any]:
    """Fit the default job of ``preset`` and report speed and held-out quality (module docstring)."""
    from ..flame.io import load_flame
    from ..flame.lbs import Flame
    from ..tracking import load_track
    from .evaluate import heldout_cameras, heldout_psnr, projection_ground_truth
    from .fit import fit_avatar, fit_device
    from .settings import preset_settings

    over: dict[str, Any] = {"train_frames": "even", "checkpoint_every": 0}
    if iterations is not None:
        over["iterations"] = int(iterations)
    if device is not None:
        over["device"] = device
    settings = preset_settings(preset).replace(**over)
    dev = fit_device(settings.device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    tmp = None
    if job_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mvp4d-bench-")
        t0 = time.time()
        job = _build_job(Path(tmp.name), preset)
        corpus_seconds = time.time() - t0
    else:
        job, corpus_seconds = Path(job_dir), None
    try:
        flame = Flame(load_flame("toy"))
        track = load_track(job / "stages" / "track", flame_source=flame)
        bar = PSNR_BAR.get(preset, 24.0)
        every = eval_every or max(1, settings.iterations // 10)
        curve: list[dict[str, float]] = []
        state: dict[str, Any] = {"eval_s": 0.0, "t0": None, "it0": 0, "eval0": 0.0, "cams": None, "truth": None}

        def on_step(it: int, m: dict, fitter) -> None:
            if state["t0"] is None:  # the first step is done: the loop's clock starts (init excluded)
                state["t0"], state["it0"], state["eval0"] = time.time(), it, state["eval_s"]
            if it % every and it != settings.iterations:
                return
            te = time.time()
            if state["cams"] is None:
                state["cams"] = heldout_cameras(fitter.corpus.cameras, 4)
                state["frames"] = list(range(1, fitter.T, 2)) or [0]
                state["truth"] = projection_ground_truth(job / "stages" / "track", flame, fitter.vertices.cpu(),
                                                         state["cams"], state["frames"])
            ev = heldout_psnr(fitter.snapshot(), state["cams"], state["frames"], state["truth"])
            # seconds since fit_avatar was called (corpus loading and initialisation included), evaluations excluded
            curve.append({"iteration": it, "seconds": round(te - t_fit - state["eval_s"], 2),
                          "psnr": round(ev["psnr"], 3), "psnr_head": round(ev["psnr_head"] or 0.0, 3)})
            state["eval_s"] += time.time() - te

        t_fit = time.time()
        res = fit_avatar(job / "stages" / "corpus", flame, track.params.shape, settings, on_step=on_step)
        fit_seconds = time.time() - t_fit - state["eval_s"]
        loop_seconds = time.time() - state["t0"] - (state["eval_s"] - state["eval0"])
        steps = res.iterations - state["it0"]
        reached = next((c["seconds"] for c in curve if c["psnr"] >= bar), None)
        return {
            "preset": preset, "device": str(dev), "threads": (settings.threads or torch.get_num_threads()) if dev.type == "cpu" else None,
            "iterations": res.iterations, "iterations_per_second": round(steps / max(loop_seconds, 1e-9), 3),
            "fit_seconds": round(fit_seconds, 2), "corpus_seconds": None if corpus_seconds is None else round(corpus_seconds, 2),
            "psnr_bar": bar, "seconds_to_bar": reached, "final_psnr": curve[-1]["psnr"] if curve else None,
            "final_train_psnr": res.stats.get("train_psnr"), "num_gaussians": res.num_gaussians,
            "peak_memory_mb": round(_peak_memory_mb(dev), 1), "curve": curve,
            "load_average": list(__import__("os").getloadavg()),
        }
    finally:
        if tmp is not None:
            tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    """``python -m backend bench fit [--preset P] [--iterations N] [--device D]`` -> JSON on stdout."""
    p = argparse.ArgumentParser(prog="python -m backend bench fit", description="benchmark the avatar fit")
    p.add_argument("--preset", default="tiny", choices=list(PSNR_BAR))
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--job", default=None, help="an existing job folder with track and corpus (skips building one)")
    a = p.parse_args(argv)
    report = run_bench(a.preset, a.iterations, a.device, a.eval_every, a.job)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
