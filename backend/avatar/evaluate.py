"""Quality of a fitted avatar where it was not trained: held-out cameras and held-out frames.

The projection generator renders ground truth from *any* camera and frame, so the fit is judged on
cameras that are not in the ring (but inside its angular range) and on frames it did not see
(``train_frames="even"`` holds the odd ones out; the U-Net's time embedding interpolates).
:func:`heldout_cameras` picks the directions of the ring's azimuth/elevation range that are farthest
from every ring camera (a deliberately hard choice), at the ring's distance and focal length.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..cameras import Camera, orbit_camera
from ..flame.lbs import Flame
from .losses import psnr


def ring_geometry(cameras: list[Camera]) -> tuple[np.ndarray, float, float]:
    """(centre the ring looks at — least-squares meeting point of the optical axes, mean distance, mean fx)."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c in cameras:
        d = c.forward
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c.center
    center = np.linalg.lstsq(A, b, rcond=None)[0]
    dist = float(np.mean([np.linalg.norm(c.center - center) for c in cameras]))
    return center, dist, float(np.mean([c.fx for c in cameras]))


def _az_el(direction: np.ndarray) -> tuple[float, float]:
    d = direction / np.linalg.norm(direction)
    return math.degrees(math.atan2(d[0], d[2])), math.degrees(math.asin(np.clip(d[1], -1, 1)))


def heldout_cameras(cameras: list[Camera], count: int = 4, margin: float = 0.15) -> list[Camera]:
    """``count`` cameras inside the ring's angular range (shrunk by ``margin``), farthest from the ring."""
    center, dist, focal = ring_geometry(cameras)
    ae = np.array([_az_el(c.center - center) for c in cameras])
    lo, hi = ae.min(0), ae.max(0)
    span = hi - lo
    lo, hi = lo + margin * span, hi - margin * span
    grid = [(a, e) for a in np.linspace(lo[0], hi[0], 9) for e in np.linspace(lo[1], hi[1], 7)]

    def unit(a: float, e: float) -> np.ndarray:
        a, e = math.radians(a), math.radians(e)
        return np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])

    taken = [(c.center - center) / np.linalg.norm(c.center - center) for c in cameras]
    out: list[Camera] = []
    res = cameras[0].width
    for k in range(count):
        best = max(grid, key=lambda g: (min(float(np.arccos(np.clip(unit(*g) @ t, -1, 1))) for t in taken), -g[0], -g[1]))
        taken.append(unit(*best))
        grid.remove(best)
        out.append(orbit_camera(float(best[0]), float(best[1]), center=center, distance=dist, focal_px=focal,
                                resolution=res, name=f"heldout{k:02d}"))
    return out


def projection_ground_truth(track_dir: str | Path, flame: Flame, vertices: torch.Tensor, cameras: list[Camera],
                            frames: list[int]) -> np.ndarray:
    """uint8 (C, len(frames), H, W, 3): the projection generator's own render of those cameras/frames."""
    from ..generators.projection import ProjectionGenerator
    from ..tracking import load_track

    track = load_track(track_dir, flame_source=flame)
    with torch.no_grad():
        ref = flame(track.params).vertices[0]
    gen = ProjectionGenerator(flame.model.faces, ref, track.camera, np.array(track.matted))  # writable copy
    return np.stack([gen.render(vertices[frames], cam) for cam in cameras])


def heldout_psnr(result, cameras: list[Camera], frames: list[int], truth: np.ndarray) -> dict:
    """PSNR (whole image, white background included) and head-region PSNR of ``result`` renders."""
    errs, head_errs = [], []
    for ci, cam in enumerate(cameras):
        for fi, t in enumerate(frames):
            gt = torch.from_numpy(truth[ci, fi]).float() / 255.0
            img = result.render(cam, t)
            img = torch.round(img * 255.0) / 255.0  # judge what would be saved (8 bit)
            errs.append(float(((img - gt) ** 2).mean()))
            head = (truth[ci, fi] < 250).any(-1)
            if head.any():
                head_errs.append(float(((img - gt) ** 2)[torch.from_numpy(head)].mean()))
    to_db = lambda e: 10 * math.log10(1.0 / max(e, 1e-12))  # noqa: E731
    return {"psnr": to_db(float(np.mean(errs))), "psnr_head": to_db(float(np.mean(head_errs))) if head_errs else None,
            "min_image_psnr": min(to_db(e) for e in errs), "images": len(errs)}


__all__ = ["heldout_cameras", "ring_geometry", "projection_ground_truth", "heldout_psnr", "psnr"]
