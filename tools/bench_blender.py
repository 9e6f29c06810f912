"""Benchmark of the add-on's avatar import and per-frame evaluation (docs/benchmarks.md).

Run with Blender's Python:  ``.venv-blender/bin/python tools/bench_blender.py [--splats 100000]``

Builds a bundle of N Gaussians bound to random triangles of the toy head (animated with 17 frames of
the rig's own keyframe-able parameters), then times, in a fresh scene: the import (read + validate +
point mesh + attributes + Geometry Nodes + rig keyframes) and the evaluation of one frame
(``scene.frame_set``: rig drivers, armature, shape keys, binding and display nodes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bpy  # noqa: E402
import numpy as np  # noqa: E402

from mvp4d_blender.blender import avatar, models, rig as rigmod  # noqa: E402
from mvp4d_blender.io import bundle as bundle_io  # noqa: E402
from mvp4d_blender.io.flame import flame_forward  # noqa: E402


def make_bundle(path: Path, n: int, frames: int = 17, sh_degree: int = 1) -> None:
    model = models.load_model(models.model_npz("toy"))
    rng = np.random.default_rng(0)
    F = model.faces.shape[0]
    T = frames
    t = np.linspace(0, 1, T)
    expr = np.zeros((T, model.num_expr))
    expr[:, 1] = np.sin(np.pi * t)
    jaw = np.zeros((T, 3))
    jaw[:, 0] = 0.3 * np.sin(np.pi * t) ** 2
    zeros3, zeros6 = np.zeros((T, 3)), np.zeros((T, 6))
    verts = np.stack([flame_forward(model, None, expr[i], zeros3[i], zeros3[i], jaw[i], zeros6[i], zeros3[i])
                      for i in range(T)])
    q = rng.normal(size=(n, 4))
    arrays = {
        "parent_face": rng.integers(0, F, n), "local_position": rng.normal(scale=0.2, size=(n, 3)),
        "local_rotation": q / np.linalg.norm(q, axis=1, keepdims=True), "log_scale": np.log(rng.uniform(0.1, 0.6, (n, 3))),
        "opacity_logit": rng.normal(size=n), "sh": rng.normal(scale=0.5, size=(n, (sh_degree + 1) ** 2, 3)), "faces": model.faces,
        "rest_vertices": model.v_template, "expr": expr, "jaw_pose": jaw, "neck_pose": zeros3, "eye_pose": zeros6,
        "global_rot": zeros3, "transl": zeros3, "vertices": verts,
        # per-frame fine detail, like a fit's: the binding samples this frame's offsets
        "detail_offsets": (0.05 * rng.normal(size=(T, n, 3))).astype(np.float16),
    }
    meta = {"fps": 24.0, "flame_model_id": model.model_id, "camera_ring": None, "generator": "benchmark",
            "settings": {}}
    bundle_io.write_bundle(path, arrays, meta)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--splats", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--sh-degree", type=int, default=1, choices=range(4),
                    help="SH degree of the splats (the 120/360 presets fit degree 3)")
    args = ap.parse_args()
    bpy.ops.wm.read_homefile(use_empty=True)
    tmp = Path(tempfile.mkdtemp(prefix="mvp4d-bench-"))
    path = tmp / "bench.safetensors"
    make_bundle(path, args.splats, sh_degree=args.sh_degree)
    model_npz = models.model_npz("toy")
    rig = rigmod.build_rig(models.load_model(model_npz), model_npz=str(model_npz))
    scene = bpy.context.scene
    t0, c0 = time.perf_counter(), time.process_time()
    obj, _ = avatar.import_avatar(bpy.context, str(path), rig)
    t_import, c_import = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    scene.frame_set(scene.frame_start)
    t_first = time.perf_counter() - t0
    results = {}
    cam = bpy.data.objects.new("bench camera", bpy.data.cameras.new("bench camera"))
    scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler = (0.0, -0.75, 0.0), (np.pi / 2, 0.0, 0.0)
    for label, show, facing in (("splats shown (world quads)", True, False),
                                ("splats shown (camera-facing, like gsplat)", True, True),
                                ("points only", False, False)):
        avatar.set_display(obj, **{"Show Splats": show, "Camera": cam if facing else None,
                                   "Focal": 700.0 if facing else 0.0})
        scene.frame_set(scene.frame_start)
        times, cpu = [], []
        for i in range(args.repeat):
            f = scene.frame_start + 1 + i % (scene.frame_end - scene.frame_start)
            t0, c0 = time.perf_counter(), time.process_time()
            scene.frame_set(f)
            bpy.context.evaluated_depsgraph_get()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        results[label] = (statistics.median(times), max(times), statistics.median(cpu))
    n = len(obj.data.vertices)
    print(f"Blender {bpy.app.version_string}, splats: {n}, SH degree {args.sh_degree}, "
          f"detail offsets: {obj.get('mvp4d_details') is not None}")
    print(f"import: {t_import:.2f} s, CPU time {c_import:.2f} s  (first evaluation {t_first * 1000:.0f} ms)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for label, (med, worst, cpu) in results.items():
        print(f"frame evaluation, {label}: median {med * 1000:.0f} ms, worst {worst * 1000:.0f} ms "
              f"(CPU time, all threads: median {cpu * 1000:.0f} ms; load average {load:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
