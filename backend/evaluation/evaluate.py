"""``python -m backend evaluate JOB|BUNDLE --against DIR``: an avatar measured like the paper's Table 1.

Renders the avatar (``outputs/avatar.safetensors`` of a job folder, or a bundle file) at every camera and
frame of a ground-truth folder (:mod:`.groundtruth`: the corpus layout) on white, exactly as
``python -m backend render`` does, and compares with the ground truth per view and overall:

* PSNR (dB; mean over the view's frames of per-frame PSNR) and SSIM (mean over frames),
* JOD (ColorVideoVDP, the view's frames as a video at the folder's fps; 10 = indistinguishable),
* LPIPS and CSIM only where their weights are present locally, otherwise ``null`` and named in
  ``missing`` (:mod:`.metrics`).

Overall = the mean over views. The paper also crops around the projected head and masks both images
with the ground truth's matte; a corpus view *is* a head crop on white, and the avatar is rendered on
white, so neither step changes anything for our folders. Output: a table on stdout (``--json``: the JSON
report instead); ``--out FILE`` also writes the JSON (a new file; an existing one is not replaced).

    python -m backend evaluate JOB_DIR --against GT_DIR [--json] [--out report.json] [--no-jod]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EXIT_ERROR, MVP4DError, bad_input
from .groundtruth import GroundTruth, load_ground_truth
from .metrics import MetricSet, psnr_u8, ssim_u8

__all__ = ["bundle_path", "evaluate_bundle", "format_table", "main"]

METRICS = ("psnr", "ssim", "lpips", "jod", "csim")
_PSNR_CAP = 100.0  # identical images: +inf dB; reported as this cap so that JSON stays JSON


def bundle_path(target: str | Path) -> Path:
    """The bundle of a job folder (``outputs/avatar.safetensors``) or the bundle file itself."""
    from ..avatar.fit_export_stages import BUNDLE_NAME

    p = Path(target)
    if p.is_dir():
        b = p / BUNDLE_NAME
        if not b.is_file():
            raise bad_input(f"the job {p} has no avatar yet ({BUNDLE_NAME})", "Run the job through the fit stage first.")
        return b
    if not p.is_file():
        raise bad_input(f"{p} is neither a job folder nor an avatar bundle", "Pass JOB_DIR or avatar.safetensors.")
    return p


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def evaluate_bundle(bundle, gt: GroundTruth, metrics: MetricSet,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """The report dict (module docstring) of ``bundle`` against ``gt``."""
    from ..avatar.fit_export_stages import render_bundle

    views = []
    n = len(gt.cameras) * len(gt.frames)
    done = 0
    t0 = time.time()
    for v, cam in enumerate(gt.cameras):
        truth = gt.video(v)
        pred = []
        for t, f in enumerate(gt.frames):
            pred.append(render_bundle(bundle, cam, f))
            done += 1
            if progress:
                progress(done, n)
        pred = np.stack(pred)
        ps = [min(psnr_u8(a, b), _PSNR_CAP) for a, b in zip(pred, truth)]
        row = {"view": cam.name, "frames": len(gt.frames),
               "psnr": float(np.mean(ps)), "ssim": float(np.mean([ssim_u8(a, b) for a, b in zip(pred, truth)])),
               "lpips": _mean([metrics.lpips_u8(a, b) for a, b in zip(pred, truth)]) if metrics.lpips else None,
               "jod": metrics.jod_video(pred, truth, gt.fps), "csim": None}
        views.append(row)
    overall = {k: _mean([r[k] for r in views]) for k in METRICS}
    return {"against": str(gt.root), "views": views, "overall": overall, "missing": dict(metrics.missing),
            "images": n, "fps": gt.fps, "jod_display": _display(), "time_s": round(time.time() - t0, 1)}


def _display() -> str:
    from .jod import DISPLAY

    return DISPLAY


def format_table(report: dict) -> str:
    def cell(x, fmt):
        return "   n/a" if x is None else format(x, fmt)

    lines = [f"{'view':<14} {'PSNR':>7} {'SSIM':>6} {'LPIPS':>6} {'JOD':>6} {'CSIM':>6}"]
    for r in report["views"] + [dict(report["overall"], view="overall")]:
        lines.append(f"{r['view']:<14} {cell(r['psnr'], '7.2f')} {cell(r['ssim'], '6.3f')} {cell(r['lpips'], '6.3f')} "
                     f"{cell(r['jod'], '6.2f')} {cell(r['csim'], '6.3f')}")
    for k, why in report["missing"].items():
        lines.append(f"{k.upper()} missing: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ..avatar.bundle import read_bundle
    from ..events import EventSink
    from ..fsutil import write_json_atomic

    p = argparse.ArgumentParser(prog="python -m backend evaluate", description=__doc__.split("\n")[0])
    p.add_argument("target", help="job folder or avatar.safetensors")
    p.add_argument("--against", required=True, help="ground-truth folder (corpus layout + cameras.json)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--out", default=None, help="also write the JSON report to this new file")
    p.add_argument("--no-jod", action="store_true", help="skip ColorVideoVDP (the slowest metric)")
    p.add_argument("--lpips", default=None, help="TorchScript LPIPS module (default: $MVP4D_LPIPS_WEIGHTS)")
    a = p.parse_args(argv)
    sink = EventSink(None, stream=sys.stderr)  # progress on stderr: stdout holds the table (or the JSON)
    try:
        if a.out and Path(a.out).exists():
            raise MVP4DError("OUTPUT_EXISTS", f"{a.out} already exists")
        bundle = read_bundle(bundle_path(a.target))
        gt = load_ground_truth(a.against, bundle.num_frames)
        report = evaluate_bundle(bundle, gt, MetricSet(jod=not a.no_jod, lpips_path=a.lpips),
                                 progress=lambda d, n: sink.progress("evaluate", d, n))
        report["bundle"] = str(bundle_path(a.target))
        if a.out:
            write_json_atomic(a.out, report)
        print(json.dumps(report, indent=2) if a.json else format_table(report))
        return 0
    except MVP4DError as e:
        EventSink(None, stream=sys.stdout).error(e, stage="evaluate")  # like every tool: the error event on stdout
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

