"""Evaluation of the CFG-ablation experiment (:mod:`.experiment`): the held-out cases, the evaluation
ring, generating one case, and the image metrics (with the VAE's reconstruction ceiling)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MVP4DError


def evaluation_ring(cameras: list, center: np.ndarray, joint_views: int):
    """A :class:`CameraRing` over ``cameras`` whose plan generates ``joint_views`` views per pass (module doc)."""
    from ..cameras import CameraRing
    from ..cameras.rings import _view_direction, cluster_views, farthest_point_keys

    n = len(cameras)
    dirs = np.stack([_view_direction(c, center) for c in cameras])
    if joint_views >= n:
        return CameraRing(cameras=list(cameras), key_indices=list(range(n)), clusters=[], cluster_keys=[], center=center)
    keys = farthest_point_keys(dirs, joint_views)
    others = [i for i in range(n) if i not in keys]
    half = max(1, joint_views // 2)
    clusters = [[others[j] for j in cl] for cl in cluster_views(dirs[others], max_size=half)]
    ckeys = []
    for cl in clusters:
        m = dirs[cl].mean(0)
        m /= np.linalg.norm(m)
        ang = [math.degrees(math.acos(float(np.clip(dirs[k] @ m, -1, 1)))) for k in keys]
        ckeys.append([keys[i] for i in np.argsort(ang, kind="stable")[:half]])
    return CameraRing(cameras=list(cameras), key_indices=list(keys), clusters=clusters, cluster_keys=ckeys, center=center)


@dataclass
class EvalCase:
    name: str
    item: Any  # TrainingItem: 8 ring views × 9 frames, reference = ref view frame 0
    vertices: torch.Tensor
    center: np.ndarray


def eval_cases(heldout_root: Path, size: int, window: int = 9) -> list[EvalCase]:
    from .data import TrainingDataset

    ds = TrainingDataset(heldout_root)
    cases = []
    for i, seq in enumerate(ds.sequences):
        views = [v for v in range(seq.num_views) if seq.views[v] != "ref"]
        frames = list(range(seq.num_frames - window, seq.num_frames))
        item = ds.load(i, views, frames, seq.views.index("ref"), 0, size, per_frame_crops=False)  # ring-like cameras
        with torch.no_grad():
            verts = ds.flame(item.params).vertices
        center = verts[:, ds._head_mask].mean((0, 1)).double().numpy()
        cases.append(EvalCase(seq.name, item, verts, center))
    return cases


def _read_views(folder: Path, names: list[str], frames: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.stack([np.asarray(Image.open(folder / n / f"{f:04d}.png").convert("RGB")) for f in range(frames)])
                     for n in names])


def image_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over images (..., H, W, 3) uint8 (per image, then averaged)."""
    from ..avatar.losses import psnr, ssim

    p = torch.from_numpy(pred.reshape(-1, *pred.shape[-3:])).float() / 255.0
    t = torch.from_numpy(truth.reshape(-1, *truth.shape[-3:])).float() / 255.0
    ps = [psnr(a, b) for a, b in zip(p, t)]
    ss = [float(ssim(a, b)) for a, b in zip(p, t)]
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss))}


def generate_case(components, case: EvalCase, flame, out: Path, *, guidance: str, views: int, seed: int,
                  steps_key: int, steps_other: int) -> dict[str, Any]:
    """Run the real MMVDM plan for one held-out identity; returns metrics, plan size and time."""
    from ..fsutil import remove_inside
    from ..generators.mmvdm import MMVDMGenerator, MMVDMSettings

    it = case.item
    ring = evaluation_ring(it.cameras, case.center, views)
    settings = MMVDMSettings(seed=seed, steps_key=steps_key, steps_other=steps_other, guidance=guidance,
                             sampler="joint", dtype="fp32", device="cpu", window_frames=49, context_frames=9)
    gen = MMVDMGenerator(settings=settings, components=components)
    if out.exists():  # our own earlier attempt at this case (views/ and state/ only), never anything else
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ("views", "state"))
        if foreign:
            raise MVP4DError("OUTPUT_EXISTS", f"{out} holds files the experiment did not write ({foreign[0]!r})",
                             "Move them away or choose another --out.")
        remove_inside(out, out.parent)
    t0 = time.time()
    info = gen.generate(ring, case.vertices, flame, it.params, it.reference_params, it.reference_camera,
                        it.reference_image, out / "views", out / "state", ref_outcrop=it.reference_outcrop)
    pred = _read_views(out / "views", [c.name for c in it.cameras], it.num_frames)
    m = image_metrics(pred, it.images)
    m.update(passes=info["passes"], time_s=round(time.time() - t0, 1))
    return m


@torch.no_grad()
def vae_ceiling(vae, cases: list[EvalCase]) -> dict[str, float]:
    from ..mmvdm.vae import MMVDMVae

    w = MMVDMVae(vae)
    preds, truths = [], []
    for c in cases:
        x = torch.from_numpy(c.item.images).float().div(127.5).sub(1).permute(0, 1, 4, 2, 3)
        rec = w.decode_views(w.encode_views(x))
        preds.append(((rec.permute(0, 1, 3, 4, 2) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy())
        truths.append(c.item.images)
    return image_metrics(np.stack(preds), np.stack(truths))
