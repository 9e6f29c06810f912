"""``python -m backend bench track-video``: how fast video tracking runs here, against real time.

Builds a clip from the embedded astronaut photo (her face under a smooth roll, zoom and shift: the
motion a talking performer makes) at the requested size and frame rate, writes it as H.264/MPEG-4
``.mp4`` in a temporary folder and runs the whole ``track-video`` command on it with torch limited
to ``--threads`` threads. Reports tracked frames per second, the time split (reading + landmarks,
fit, total) and the real-time factor (clip duration / tracking time; > 1 is faster than real time).
On a shared machine wall time depends on the load, so the CPU time the run used is reported too
(``realtime_factor_cpu``: clip duration / CPU seconds, what one otherwise idle core would give; the fit
runs on one thread, MediaPipe on its own) with the load average.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def performance_clip(num_frames: int, size: int) -> np.ndarray:
    """(T, size, size, 3) uint8: the astronaut's face rolling ±6°, zooming ±8 % and shifting."""
    import cv2

    from .image import default_reference_image

    face = cv2.resize(default_reference_image()[0:300, 100:400], (size, size), interpolation=cv2.INTER_AREA)
    t = np.linspace(0.0, 1.0, num_frames)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for k in range(num_frames):
        m = cv2.getRotationMatrix2D((size / 2, size / 2), 6.0 * np.sin(2 * np.pi * t[k]), 1.0 + 0.08 * np.sin(np.pi * t[k]))
        m[:, 2] += [size / 32 * np.sin(2 * np.pi * t[k]), size / 50 * np.cos(2 * np.pi * t[k])]
        frames[k] = cv2.warpAffine(face, m, (size, size), borderValue=(255, 255, 255))
    return frames


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads: MediaPipe's and torch's)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_bench(seconds: float, size: int, fps: float, threads: int, steps: int) -> dict:
    import cv2
    import torch

    from .video_cli import main as track_video

    n = max(int(round(seconds * fps)), 2)
    frames = performance_clip(n, size)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="mvp4d-bench-video-") as tmp:
        video = Path(tmp) / "clip.mp4"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
        for f in frames:
            writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        writer.release()
        out = Path(tmp) / "out"
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the command's events: stdout is this report's
            rc = track_video(["--video", str(video), "--out", str(out), "--steps", str(steps)])
        wall = time.perf_counter() - t0
        cpu = _cpu_seconds() - cpu0
        report = json.loads((out / "tracking.json").read_text()) if rc == 0 else {}
    secs = report.get("seconds", {})
    return {
        "benchmark": "track-video", "rc": rc, "frames": n, "size": size, "clip_fps": fps, "clip_seconds": n / fps,
        "torch_threads": threads, "steps": steps, "seconds_total_wall": round(wall, 3),
        "seconds_read_and_landmarks": secs.get("detect"), "seconds_fit": secs.get("fit"),
        "tracking_fps": round(n / wall, 2), "landmark_fps": round(n / secs["detect"], 2) if secs.get("detect") else None,
        "realtime_factor": round((n / fps) / wall, 3),
        "cpu_seconds": round(cpu, 3), "cpu_ms_per_frame": round(1000 * cpu / n, 2),
        "realtime_factor_cpu": round((n / fps) / cpu, 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "mean_error_px": report.get("mean_error_px"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend bench track-video", description="benchmark video tracking")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length")
    p.add_argument("--size", type=int, default=512, help="frame width and height")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (cores)")
    p.add_argument("--steps", type=int, default=100, help="optimiser iterations of the clip fit")
    a = p.parse_args(argv)
    print(json.dumps(run_bench(a.seconds, a.size, a.fps, a.threads, a.steps), indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
