"""``python -m backend render``: the backend's own render of an avatar bundle (one view, or a turntable).

The reference image every other renderer of the avatar (the Blender add-on's ``render_avatar``, an
engine) is compared with: the bundle posed at bundle frame ``F`` exactly as the fit saw it (per-frame
vertices and detail offsets), rasterized by :func:`backend.render.gaussians.rasterize` (gsplat's maths),
written as an RGBA PNG with straight (unpremultiplied) alpha over a transparent background.

    python -m backend render BUNDLE [--cameras CAMERAS.json] --view NAME --frame F [--resolution R] --out PNG
    python -m backend render BUNDLE --view NAME --turntable 36 [--resolution R] --out FOLDER

``--cameras`` is a JSON list of ``protocol.CameraSpec`` (a job's ``stages/corpus/cameras.json``); without
it the bundle's own ``camera_ring`` metadata is used. ``--resolution`` rescales the view so its longer
side has R pixels. ``--turntable N`` writes ``FOLDER/NNNN.png``: N views orbiting the head at the
view's distance and elevation, the animation playing along (view i shows frame i mod T).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from ..errors import EXIT_ERROR, MVP4DError, bad_input


def load_cameras(path: str | None, bundle) -> list:
    """Cameras of ``path`` (a list of CameraSpec JSON) or of the bundle's ``camera_ring`` metadata."""
    from ..cameras import Camera
    from ..protocol import CameraSpec

    if path:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise bad_input(f"cannot read cameras {path}: {e}", "Pass a job's stages/corpus/cameras.json.") from e
        where = Path(path).name
    else:
        data, where = bundle.metadata.get("camera_ring"), "the bundle's camera_ring"
    if isinstance(data, dict):
        data = data.get("cameras")
    if not isinstance(data, list) or not data:
        raise bad_input(f"{where} holds no cameras", "Pass --cameras with a list of CameraSpec objects.")
    return [Camera.from_spec(CameraSpec.from_json(c, where)) for c in data]


def pick_view(cameras: list, name: str):
    for c in cameras:
        if c.name == name:
            return c
    raise bad_input(f"no view named {name!r}", f"Views: {', '.join(c.name for c in cameras)}.")


def at_resolution(camera, resolution: int | None):
    """``camera`` rescaled so its longer side has ``resolution`` pixels (unchanged without one)."""
    if not resolution:
        return camera
    if resolution < 1:
        raise bad_input(f"--resolution must be positive, got {resolution}")
    s = resolution / max(camera.width, camera.height)
    return camera.scaled(max(1, round(camera.width * s)), max(1, round(camera.height * s)))


def render_rgba(bundle, camera, frame: int) -> np.ndarray:
    """uint8 (H, W, 4): the avatar at bundle ``frame``, straight alpha over transparency."""
    from .fit_export_stages import render_bundle

    if not 0 <= frame < bundle.num_frames:
        raise bad_input(f"frame {frame} is outside the bundle's 0..{bundle.num_frames - 1}")
    rgb, alpha = render_bundle(bundle, camera, frame, background=(0.0, 0.0, 0.0), with_alpha=True)
    straight = np.where(alpha > 1e-6, rgb / np.maximum(alpha, 1e-6), 0.0)
    out = np.concatenate([np.clip(straight, 0, 1), np.clip(alpha, 0, 1)], axis=-1)
    return (out * 255 + 0.5).astype(np.uint8)


def turntable_cameras(bundle, view, count: int, frame: int) -> list:
    """``count`` cameras orbiting the head centre at ``view``'s distance, elevation and intrinsics."""
    from ..cameras import orbit_camera

    verts = np.asarray(bundle.vertices[frame], np.float64)
    center = (verts.min(0) + verts.max(0)) / 2
    d = view.center - center
    dist = float(np.linalg.norm(d))
    elev = math.degrees(math.asin(np.clip(d[1] / max(dist, 1e-12), -1, 1)))
    az0 = math.degrees(math.atan2(d[0], d[2]))
    return [orbit_camera(az0 + 360.0 * i / count, elev, center=center, distance=dist, focal_px=(view.fx, view.fy),
                         resolution=(view.width, view.height), name=f"turntable{i:04d}") for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    from ..avatar.bundle import read_bundle
    from ..events import EventSink
    from ..tracking.image import save_png_atomic

    p = argparse.ArgumentParser(prog="python -m backend render", description=__doc__.split("\n")[0])
    p.add_argument("bundle", help="avatar.safetensors")
    p.add_argument("--cameras", default=None, help="JSON list of CameraSpec (default: the bundle's camera ring)")
    p.add_argument("--view", required=True, help="camera name, e.g. key00")
    p.add_argument("--frame", type=int, default=0, help="bundle frame (0-based)")
    p.add_argument("--resolution", type=int, default=None, help="longer image side in pixels")
    p.add_argument("--turntable", type=int, default=0, metavar="N", help="N orbiting views into the --out folder")
    p.add_argument("--out", required=True, help="PNG file (a folder with --turntable)")
    args = p.parse_args(argv)
    sink = EventSink(None, stream=sys.stdout)
    try:
        bundle = read_bundle(args.bundle)
        view = at_resolution(pick_view(load_cameras(args.cameras, bundle), args.view), args.resolution)
        if args.turntable:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            cams = turntable_cameras(bundle, view, args.turntable, args.frame)
            for i, cam in enumerate(cams):
                save_png_atomic(out / f"{i:04d}.png", render_rgba(bundle, cam, (args.frame + i) % bundle.num_frames))
                sink.progress("render", i + 1, len(cams))
        else:
            out = save_png_atomic(args.out, render_rgba(bundle, view, args.frame))
        sink.done({"render": str(out)})
        return 0
    except MVP4DError as e:
        sink.error(e, stage="render")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
