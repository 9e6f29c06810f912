"""The ground-truth folder ``evaluate`` compares an avatar with: the corpus layout a job already writes.

    DIR/
      cameras.json      list of protocol.CameraSpec (one per view; ``name`` = the view's name)
      corpus.json       {"views": [{"name": N, "dir": D}, ...], "num_frames": T, "fps": f,
                         optional "frame_pattern": "{frame:04d}.png",
                         optional "frames": [bundle frame of GT frame 0, 1, ...] (default 0 … T−1)}
      D/0000.png …      the view's frames, uint8 RGB (RGBA is composited on white), camera-sized

A job's ``stages/corpus/`` is such a folder (its ``animation.npz`` and extra keys are ignored), so an
avatar can be checked against the corpus it was fitted to; held-out cameras or frames are written in the
same layout (``frames`` maps held-out GT frames to bundle frames). Paths in ``corpus.json`` are confined
to ``DIR`` (the file is data, not trusted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..cameras import Camera
from ..errors import bad_input
from ..jobpaths import confine
from ..protocol import CameraSpec

__all__ = ["GroundTruth", "load_ground_truth", "write_ground_truth"]

_HINT = "Point --against at a folder with cameras.json, corpus.json and one sub-folder of PNG frames per view " \
        "(a job's stages/corpus/ has this layout; docs/benchmarks.md, 'Evaluation')."


@dataclass
class GroundTruth:
    root: Path
    cameras: list[Camera]
    dirs: list[str]
    frames: list[int]  # bundle frame of each GT frame
    fps: float
    pattern: str = "{frame:04d}.png"

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def video(self, view: int) -> np.ndarray:
        """uint8 (T, H, W, 3) of one view (RGBA composited on white); ``BAD_INPUT`` naming a bad frame."""
        cam = self.cameras[view]
        out = []
        for t in range(len(self.frames)):
            p = confine(self.root, self.dirs[view], self.pattern.format(frame=t), where=f"corpus.json: views[{view}]")
            if not p.is_file():
                raise bad_input(f"ground truth {self.root}: view {cam.name!r} has no frame {t} ({p.name})", _HINT)
            try:
                with Image.open(p) as im:
                    im.load()
                    rgba = np.asarray(im.convert("RGBA"), dtype=np.float64)
            except OSError as e:
                raise bad_input(f"ground truth {p} is not a readable image ({e})", _HINT) from e
            if rgba.shape[:2] != (cam.height, cam.width):
                raise bad_input(f"ground truth {p} is {rgba.shape[1]}x{rgba.shape[0]} but camera {cam.name!r} is "
                                f"{cam.width}x{cam.height}", _HINT)
            a = rgba[..., 3:] / 255.0
            out.append(np.clip(rgba[..., :3] * a + 255.0 * (1 - a) + 0.5, 0, 255).astype(np.uint8))
        return np.stack(out)


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise bad_input(f"the ground-truth folder has no {path.name} ({path.parent})", _HINT) from e
    except (OSError, ValueError) as e:
        raise bad_input(f"cannot read {path}: {e}", _HINT) from e


def load_ground_truth(folder: str | Path, num_bundle_frames: int | None = None) -> GroundTruth:
    root = Path(folder)
    if not root.is_dir():
        raise bad_input(f"ground-truth folder {root} does not exist", _HINT)
    manifest, specs = _json(root / "corpus.json"), _json(root / "cameras.json")
    if not isinstance(specs, list) or not specs or not isinstance(manifest, dict):
        raise bad_input(f"{root}: cameras.json must be a non-empty list and corpus.json an object", _HINT)
    cams = [Camera.from_spec(CameraSpec.from_json(s, f"cameras.json[{i}]")) for i, s in enumerate(specs)]
    views = manifest.get("views")
    if not isinstance(views, list) or len(views) != len(cams):
        raise bad_input(f"{root}: corpus.json lists {len(views) if isinstance(views, list) else 'no'} views but "
                        f"cameras.json has {len(cams)} cameras", _HINT)
    dirs = []
    for i, (v, c) in enumerate(zip(views, cams)):
        if not isinstance(v, dict) or not isinstance(v.get("dir"), str):
            raise bad_input(f"{root}: corpus.json views[{i}] needs a 'dir'", _HINT)
        if v.get("name", c.name) != c.name:
            raise bad_input(f"{root}: corpus.json views[{i}] is {v.get('name')!r} but cameras.json[{i}] is {c.name!r}")
        dirs.append(v["dir"])
    try:
        T = int(manifest["num_frames"])
        fps = float(manifest.get("fps", 24.0))
    except (KeyError, TypeError, ValueError) as e:
        raise bad_input(f"{root}: corpus.json needs num_frames (and a numeric fps)", _HINT) from e
    frames = manifest.get("frames", list(range(T)))
    if not isinstance(frames, list) or len(frames) != T or not all(isinstance(f, int) and f >= 0 for f in frames):
        raise bad_input(f"{root}: corpus.json 'frames' must list one bundle frame (int >= 0) per GT frame ({T})", _HINT)
    if T < 1 or fps <= 0:
        raise bad_input(f"{root}: corpus.json needs num_frames >= 1 and fps > 0", _HINT)
    if num_bundle_frames is not None and max(frames) >= num_bundle_frames:
        raise bad_input(f"{root}: ground-truth frame(s) map to bundle frame {max(frames)} but the avatar has "
                        f"{num_bundle_frames} frames", "Evaluate against ground truth of the same animation.")
    pattern = str(manifest.get("frame_pattern", "{frame:04d}.png"))
    return GroundTruth(root, cams, dirs, [int(f) for f in frames], fps, pattern)


def write_ground_truth(folder: str | Path, cameras: list[Camera], videos: np.ndarray, frames: list[int],
                       fps: float = 24.0) -> Path:
    """Write ``videos`` uint8 (C, T, H, W, 3) in the layout above (a new folder; refuses an existing one)."""
    from ..fsutil import write_json_atomic
    from ..tracking.image import save_png_atomic

    root = Path(folder)
    if root.exists():
        raise bad_input(f"{root} already exists", "Choose a new folder for the ground truth.")
    root.mkdir(parents=True)
    for cam, video in zip(cameras, videos):
        for t, img in enumerate(video):
            save_png_atomic(root / cam.name / f"{t:04d}.png", img)
    write_json_atomic(root / "cameras.json", [cam.to_spec().__dict__ for cam in cameras])  # as the corpus stage
    write_json_atomic(root / "corpus.json", {"views": [{"name": c.name, "dir": c.name} for c in cameras],
                                             "num_frames": int(videos.shape[1]), "fps": float(fps),
                                             "frames": [int(f) for f in frames]})
    return root
