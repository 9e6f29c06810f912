"""Held-out ground truth for a projection-generator job: the paper's evaluation on views it never fit.

The projection generator renders the tracked photo onto the head from *any* camera, so for a job made
with it the truth at cameras outside the ring is known. ``python -m backend.evaluation.heldout JOB --out
DIR`` writes, in the ground-truth layout of :mod:`.groundtruth`, the projection generator's frames at
``--count`` cameras inside the ring's angular range but farthest from every ring camera
(:func:`backend.avatar.evaluate.heldout_cameras`) for every frame of the avatar (or ``--frames odd``);
then ``python -m backend evaluate JOB --against DIR`` scores the avatar there (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..errors import EXIT_ERROR, MVP4DError

__all__ = ["write_heldout_ground_truth", "main"]


def write_heldout_ground_truth(job: str | Path, out: str | Path, count: int = 4, frames: str = "all") -> Path:
    from ..avatar.bundle import read_bundle
    from ..avatar.evaluate import heldout_cameras, projection_ground_truth
    from ..cameras import Camera
    from ..flame import Flame, load_flame
    from ..protocol import CameraSpec
    from .evaluate import bundle_path
    from .groundtruth import write_ground_truth

    job = Path(job)
    bundle = read_bundle(bundle_path(job))
    specs = json.loads((job / "stages" / "corpus" / "cameras.json").read_text(encoding="utf-8"))
    ring = [Camera.from_spec(CameraSpec.from_json(s, "cameras.json")) for s in specs]
    cams = heldout_cameras(ring, count)
    T = bundle.num_frames
    idx = list(range(1, T, 2)) if frames == "odd" and T > 1 else list(range(T))
    spec = json.loads((job / "job.json").read_text(encoding="utf-8"))
    flame = Flame(load_flame(spec.get("inputs", {}).get("flame_model", "toy")))
    verts = torch.as_tensor(bundle.vertices, dtype=torch.float32)
    truth = projection_ground_truth(job / "stages" / "track", flame, verts, cams, idx)
    fps = float(bundle.metadata.get("fps", 24.0))
    return write_ground_truth(out, cams, truth, idx, fps=fps)


def main(argv: list[str] | None = None) -> int:
    from ..events import EventSink

    p = argparse.ArgumentParser(prog="python -m backend.evaluation.heldout", description=__doc__.split("\n")[0])
    p.add_argument("job", help="a finished projection-generator job folder")
    p.add_argument("--out", required=True, help="new ground-truth folder")
    p.add_argument("--count", type=int, default=4, help="held-out cameras")
    p.add_argument("--frames", choices=("all", "odd"), default="all")
    a = p.parse_args(argv)
    try:
        print(json.dumps({"ground_truth": str(write_heldout_ground_truth(a.job, a.out, a.count, a.frames))}))
        return 0
    except MVP4DError as e:
        EventSink(None, stream=sys.stdout).error(e, stage="heldout")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
