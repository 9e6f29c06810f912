"""Test fixtures made with the backend interpreter: ``python -m tests.backend_fixtures`` (repo root on PYTHONPATH).

Commands (each prints one JSON line on success, an ``error`` event and exit code 1 on failure):

* ``flame-forward SOURCE PARAMS.npz OUT.npy`` - posed vertices ``(T, V, 3)`` of a parameter file
  (one frame or a sequence), with the backend's own ``Flame``.
* ``toy-bundle OUT.safetensors [--job JOB] [--flame SOURCE]`` - a stand-in avatar bundle
  (``protocol.BUNDLE_TENSORS``): one flat Gaussian per FLAME triangle, coloured from the job's tracked
  photo when ``--job`` is given, animated with the job's corpus sequence (else the built-in one). The
  Blender tests import, bind and export it in seconds, without a fit; it is not a fitted avatar.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from backend.blender_support import run_json_command


def cmd_flame_forward(args: argparse.Namespace) -> dict:
    import torch

    from backend.flame.io import load_flame
    from backend.flame.lbs import Flame, FlameParams

    flame = Flame(load_flame(args.source))
    params = FlameParams.load_npz(args.params, flame.num_shape, flame.num_expr)
    with torch.no_grad():
        verts = flame(params).vertices.cpu().numpy()
    np.save(args.out, verts.astype(np.float64))
    return {"npy": args.out, "shape": list(verts.shape)}


def _face_colours(flame, faces: np.ndarray, job: Path | None) -> np.ndarray:
    """RGB in [0, 1] per face: the tracked photo projected onto the reference-pose mesh, else grey."""
    import torch

    F = faces.shape[0]
    if job is None or not (job / "stages" / "track" / "flame_params.npz").is_file():
        return np.full((F, 3), 0.6)
    from backend.tracking import load_track
    from backend.tracking.image import load_image

    track = load_track(job / "stages" / "track", flame_source=flame)
    image = track.matted if track.matted is not None else load_image(job / "inputs" / "reference.png")
    with torch.no_grad():
        v = flame(track.params).vertices[0].cpu().numpy()
    uv, _z = track.camera.project(v[faces].mean(axis=1))
    h, w = image.shape[:2]
    x = np.clip(np.round(uv[:, 0]).astype(int), 0, w - 1)
    y = np.clip(np.round(uv[:, 1]).astype(int), 0, h - 1)
    return image[y, x].astype(np.float64) / 255.0


def cmd_toy_bundle(args: argparse.Namespace) -> dict:
    import torch

    from backend.animation import builtin_animation
    from backend.avatar.bundle import AvatarBundle, write_bundle
    from backend.flame.io import load_flame
    from backend.flame.lbs import Flame, FlameParams
    from backend.protocol import DEFAULT_FPS

    job = Path(args.job) if args.job else None
    model = load_flame(args.flame)
    flame = Flame(model)
    faces = model.faces.astype(np.int64)
    F = faces.shape[0]
    anim_file = job / "stages" / "corpus" / "animation.npz" if job else None
    if anim_file is not None and anim_file.is_file():
        seq = FlameParams.load_npz(anim_file, flame.num_shape, flame.num_expr)
    else:
        seq = builtin_animation("default", model, args.frames)
    with torch.no_grad():
        rest = flame.neutral_vertices(seq.shape).cpu().numpy()
        verts = flame(seq).vertices.cpu().numpy()
    rng = np.random.default_rng(args.seed)
    rgb = np.clip(_face_colours(flame, faces, job), 0.02, 0.98)
    sh = np.zeros((F, 4, 3), np.float32)
    sh[:, 0, :] = (rgb - 0.5) / 0.28209479177387814
    q = np.zeros((F, 4), np.float32)
    q[:, 0] = 1.0
    q[:, 1:] = rng.normal(scale=0.05, size=(F, 3))
    arrays = {
        "gaussians.parent_face": np.arange(F, dtype=np.int32),
        "gaussians.local_position": rng.normal(scale=0.05, size=(F, 3)).astype(np.float32),
        "gaussians.local_rotation": (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32),
        # flat splats in the triangle's plane: axis 1 of the face frame is the normal
        "gaussians.log_scale": np.tile(np.log([0.55, 0.08, 0.55]), (F, 1)).astype(np.float32),
        "gaussians.opacity_logit": np.full(F, 4.0, np.float32),
        "gaussians.sh": sh,
        "mesh.faces": faces.astype(np.int32),
        "mesh.rest_vertices": rest.astype(np.float32),
        "animation.vertices": verts.astype(np.float16),
    }
    for k in ("expr", "jaw_pose", "neck_pose", "eye_pose", "global_rot", "transl"):
        arrays[f"animation.{k}"] = getattr(seq, k).cpu().numpy().astype(np.float32)
    # per-frame fine detail, as a fit produces it: small triangle-local offsets that change every frame
    T = verts.shape[0]
    wobble = np.sin(np.arange(T, dtype=np.float64) + 1.0)[:, None, None]
    arrays["animation.detail_offsets"] = (0.15 * wobble * rng.normal(size=(1, F, 3))).astype(np.float16)
    cameras_json = job / "stages" / "corpus" / "cameras.json" if job else None
    ring = json.loads(cameras_json.read_text(encoding="utf-8")) if cameras_json and cameras_json.is_file() else None
    meta = {"fps": DEFAULT_FPS, "flame_model_id": model.model_id, "camera_ring": ring, "generator": "toy-bundle",
            "settings": {"note": "stand-in bundle from tests.backend_fixtures, not a fitted avatar"}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bundle(out, AvatarBundle.build(arrays, meta))
    return {"bundle": str(out), "gaussians": F, "frames": int(verts.shape[0])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.backend_fixtures", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("flame-forward")
    p.add_argument("source")
    p.add_argument("params")
    p.add_argument("out")
    p.set_defaults(func=cmd_flame_forward)
    p = sub.add_parser("toy-bundle")
    p.add_argument("out")
    p.add_argument("--job", default=None)
    p.add_argument("--flame", default="toy")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_toy_bundle)
    return run_json_command(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
