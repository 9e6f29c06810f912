"""A synthetic MMVDM training set in the :mod:`backend.training.data` format, rendered from the toy head.

It mirrors the paper's three data modalities (Table 2) at toy scale, one sequence of each per identity:

* ``<id>-mono`` — *monocular video* (VFHQ-like): one roughly frontal camera, ``monocular_frames`` frames,
  a moving head (smooth random yaw/pitch/roll and translation) with a random expression track;
* ``<id>-mvimg`` — *multi-view images* (Ava-256-like): ``multiview_image_views`` cameras all around the
  head (the first three frontal), one frame with a random expression;
* ``<id>-mvvid`` — *multi-view video* (Nersemble-like): ``multiview_video_views`` forward-facing
  cameras (azimuth ±70°, elevation −15…30°), ``multiview_video_frames`` frames, an expression track.

An identity is a random FLAME shape (toy components, N(0, 1) clipped to ±2.5) plus a random procedural
texture evaluated on the *rest* surface (so it sticks to the skin as the head moves): skin tone with
low-frequency blotches and blush, lips, eyebrows, sclera and iris, a hair cap with a random hairline
(or bald), optional beard and optional face paint (random colour bands). Each sequence has its own
directional light (Lambert + ambient), camera distance, focal length and principal-point jitter. Frames
are rendered with the torch rasterizer at ``supersample`` × the image size, area-downsampled, on white;
the coverage is written as the matte. Expression tracks are sums of random sinusoids of 2–5 named
components (jaw_open, smile, blinks, brows, …), blinks as short pulses.

:func:`generate_heldout_set` writes evaluation sequences of *new* identities (a different random
stream): ``<id>-eval`` with the 8 key directions of the "120" preset plus a frontal ``ref`` view and
``eval_frames`` frames; the evaluation takes the reference image from ``ref`` at frame 0 and scores the
ring views on the last frames (a different frame *and* viewpoint, as the paper's self-reenactment
protocol).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as Fn

from ..cameras import Camera, look_at, orbit_direction
from ..cameras.camera import intrinsics
from ..errors import bad_input
from ..flame import Flame, FlameParams, load_flame
from ..render.raster import interpolate, rasterize
from .data import write_dataset_json, write_sequence
from .synthetic_identity import random_identity, texture

__all__ = ["SyntheticConfig", "generate_synthetic_dataset", "generate_heldout_set", "random_identity",
           "render_sequence", "EVAL_DIRECTIONS"]

#: evaluation ring: the key directions of the "120" preset (azimuth, elevation), degrees
EVAL_DIRECTIONS = [(a, e) for e in (-5.0, 20.0) for a in (-45.0, -15.0, 15.0, 45.0)]
_HEAD_EXTENT = 0.24  # metres, the toy head proper's largest extent (crop framing)


@dataclass
class SyntheticConfig:
    identities: int = 24
    seed: int = 0
    image_size: int = 96  # full-frame render size (the reader crops the head and resizes)
    head_fraction: float = 0.62  # the head's extent as a fraction of the image (before cropping)
    supersample: int = 2
    monocular_frames: int = 25
    multiview_image_views: int = 16
    multiview_video_views: int = 8
    multiview_video_frames: int = 17
    modalities: tuple[str, ...] = ("monocular-video", "multiview-images", "multiview-video")
    video_files: bool = False  # per-view FFV1 videos instead of PNG frames
    flame_model: str = "toy"

    def validate(self) -> None:
        if self.identities < 1:
            raise bad_input("synthetic data: identities must be >= 1")
        if self.image_size < 16 or self.image_size % 8:
            raise bad_input(f"synthetic data: image_size must be a multiple of 8 >= 16, got {self.image_size}")
        known = {"monocular-video", "multiview-images", "multiview-video"}
        if not self.modalities or set(self.modalities) - known:
            raise bad_input(f"synthetic data: modalities must be among {sorted(known)}, got {self.modalities}")


# ---------------------------------------------------------------------------------------------
# motion and cameras
# ---------------------------------------------------------------------------------------------


def _track(rng: np.random.Generator, F: int, amp: float, freq: tuple[float, float] = (0.02, 0.12)) -> np.ndarray:
    t = np.arange(F, dtype=np.float64)
    out = np.zeros(F)
    for _ in range(2):
        out += amp * rng.uniform(0.3, 1.0) * np.sin(2 * math.pi * rng.uniform(*freq) * t + rng.uniform(0, 2 * math.pi))
    return out / 1.5


def random_animation(rng: np.random.Generator, flame: Flame, shape: torch.Tensor, F: int, *,
                     head_motion: float) -> FlameParams:
    """Expression track of 2–5 named components (+ blinks), jaw, gaze and head motion (degrees amplitude)."""
    p = FlameParams.zeros(flame, F)
    p.shape = shape.clone()
    names = list(flame.model.expression_names or [])
    E = flame.num_expr
    expr = np.zeros((F, E))
    k = int(rng.integers(2, 6))
    for e in rng.choice(E, size=min(k, E), replace=False):
        name = names[e] if e < len(names) else ""
        if name.startswith("blink"):
            continue
        base = rng.uniform(-0.2, 0.6)
        expr[:, e] = np.clip(base + _track(rng, F, rng.uniform(0.2, 0.8)), -0.5, 1.2)
    for side in ("blink_left", "blink_right"):
        if side in names and rng.random() < 0.7:
            e = names.index(side)
            for _ in range(int(rng.integers(0, 3))):
                c, w = rng.uniform(0, F), rng.uniform(1.0, 2.5)
                expr[:, e] = np.maximum(expr[:, e], np.exp(-0.5 * ((np.arange(F) - c) / w) ** 2))
    p.expr = torch.tensor(expr, dtype=torch.float32)
    p.jaw_pose[:, 0] = torch.tensor(np.clip(0.05 + _track(rng, F, 0.08), 0, 0.25), dtype=torch.float32)
    p.eye_pose[:, :2] = torch.tensor(np.stack([_track(rng, F, 0.15), _track(rng, F, 0.2)], -1), dtype=torch.float32)
    p.eye_pose[:, 3:5] = p.eye_pose[:, :2]
    deg = math.pi / 180
    rot = np.stack([_track(rng, F, head_motion * 0.5 * deg), _track(rng, F, head_motion * deg),
                    _track(rng, F, head_motion * 0.3 * deg)], -1)
    if F == 1:
        rot = rng.uniform(-1, 1, (1, 3)) * head_motion * deg * np.array([0.5, 1, 0.3])
    p.global_rot = torch.tensor(rot, dtype=torch.float32)
    p.transl = torch.tensor(np.stack([_track(rng, F, 0.004 * head_motion / 10) for _ in range(3)], -1)
                            if F > 1 else np.zeros((1, 3)), dtype=torch.float32)
    return p


def _camera(az: float, el: float, rng: np.random.Generator, cfg: SyntheticConfig, name: str, distance: float,
            center=(0.0, 0.0, 0.0)) -> Camera:
    res = cfg.image_size
    d = orbit_direction(az, el)
    up = np.array([0.0, 1.0, 0.0])
    if abs(d @ up) > 0.98:
        up = np.array([0.0, 0.0, -1.0 if d[1] > 0 else 1.0])
    c = np.asarray(center, dtype=np.float64)
    w2c = look_at(c + distance * d, c, up=up)
    f = cfg.head_fraction * res * distance / _HEAD_EXTENT
    K = intrinsics(f, res, res)
    K[0, 2] += rng.uniform(-0.04, 0.04) * res
    K[1, 2] += rng.uniform(-0.04, 0.04) * res
    return Camera(K=K, world_to_cam=w2c, width=res, height=res, name=name)


def _directions(rng: np.random.Generator, modality: str, n: int) -> list[tuple[float, float]]:
    if modality == "monocular-video":
        return [(rng.uniform(-25, 25), rng.uniform(-10, 15))]
    if modality == "multiview-images":
        front = [(rng.uniform(-20, 20), rng.uniform(-8, 12)) for _ in range(min(3, n))]
        rest = [(rng.uniform(-180, 180), float(np.degrees(np.arcsin(rng.uniform(-0.5, 0.87))))) for _ in range(n - len(front))]
        return front + rest
    return [(rng.uniform(-70, 70), rng.uniform(-15, 30)) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------


def _vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    v0, v1, v2 = (verts[:, faces[:, i]] for i in range(3))
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1)
    vn = torch.zeros_like(verts)
    for i in range(3):
        vn.index_add_(1, faces[:, i], fn)
    return Fn.normalize(vn, dim=-1)


@torch.no_grad()
def render_sequence(flame: Flame, params: FlameParams, cameras: list[Camera], tex: dict[str, Any],
                    light: np.ndarray, ambient: float, supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (V, F, H, W, 3) on white and mattes uint8 (V, F, H, W)."""
    verts = flame(params).vertices.float()  # (F, N, 3)
    faces = flame.faces
    rest = flame.neutral_vertices(params.shape).float()  # texture lives on the rest surface
    normals = _vertex_normals(verts, faces)
    L = torch.tensor(light / np.linalg.norm(light), dtype=torch.float32)
    F = verts.shape[0]
    imgs, mattes = [], []
    for cam in cameras:
        s = int(supersample)
        rc = cam.scaled(cam.width * s, cam.height * s)
        K = torch.tensor(rc.K, dtype=torch.float32).expand(F, 3, 3)
        w2c = torch.tensor(rc.world_to_cam, dtype=torch.float32).expand(F, 4, 4)
        frags = rasterize(verts, faces, w2c, K, rc.height, rc.width)
        attrs = torch.cat([rest.expand(F, -1, 3), normals], dim=-1)
        vals = interpolate(frags, faces, attrs)  # (F, H, W, 6)
        albedo = texture(vals[..., :3], tex)
        n = Fn.normalize(vals[..., 3:], dim=-1)
        shade = ambient + (1 - ambient) * (n @ L).clamp(min=0)
        rgb = (albedo * shade[..., None]).clamp(0, 1)
        m = frags.mask.float()[..., None]
        rgb = rgb * m + (1 - m)
        out = torch.cat([rgb, m], dim=-1).permute(0, 3, 1, 2)
        if s > 1:
            out = Fn.avg_pool2d(out, s)
        out = out.permute(0, 2, 3, 1)
        imgs.append((out[..., :3] * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy())
        mattes.append((out[..., 3] * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy())
    return np.stack(imgs), np.stack(mattes)


def _sequence(out: Path, name: str, identity: dict[str, Any], modality: str, rng: np.random.Generator,
              flame: Flame, cfg: SyntheticConfig, directions: list[tuple[float, float]] | None = None,
              frames: int | None = None, view_names: list[str] | None = None, head_motion: float | None = None,
              light_front: bool = False) -> Path:
    shape = torch.tensor(identity["shape"], dtype=torch.float32)
    if frames is None:
        frames = {"monocular-video": cfg.monocular_frames, "multiview-images": 1,
                  "multiview-video": cfg.multiview_video_frames}[modality]
    n_views = {"monocular-video": 1, "multiview-images": cfg.multiview_image_views,
               "multiview-video": cfg.multiview_video_views}[modality]
    dirs = directions if directions is not None else _directions(rng, modality, n_views)
    if head_motion is None:
        head_motion = {"monocular-video": 12.0, "multiview-images": 8.0, "multiview-video": 4.0}[modality]
    params = random_animation(rng, flame, shape, frames, head_motion=head_motion)
    distance = rng.uniform(0.9, 1.3)
    names = view_names or [f"cam{i:02d}" for i in range(len(dirs))]
    center = (0.0, -0.01, 0.0)
    cams = [_camera(a, e, rng, cfg, nm, distance * rng.uniform(0.97, 1.03), center) for (a, e), nm in zip(dirs, names)]
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(0.0, 0.9), 1.0 if light_front else rng.uniform(0.3, 1.0)])
    ambient = float(rng.uniform(0.4, 0.7))
    images, mattes = render_sequence(flame, params, cams, identity["texture"], light, ambient, cfg.supersample)
    return write_sequence(out / name, names, cams, params, images, mattes, fps=25.0, identity=name.split("-")[0],
                          video=cfg.video_files, modality=modality)


def generate_synthetic_dataset(out: str | Path, config: SyntheticConfig | None = None,
                               progress: Callable[[int, int], None] | None = None) -> Path:
    """Write a training dataset of ``config.identities`` random identities to ``out`` (see module docstring).
    Deterministic given the config; sequences already present (complete folders) are kept."""
    cfg = config or SyntheticConfig()
    cfg.validate()
    out = Path(out)
    flame = Flame(load_flame(cfg.flame_model))
    names = []
    total = cfg.identities * len(cfg.modalities)
    done = 0
    for i in range(cfg.identities):
        identity = random_identity(np.random.default_rng([cfg.seed, 0, i]), flame.num_shape)
        for m_i, modality in enumerate(cfg.modalities):
            suffix = {"monocular-video": "mono", "multiview-images": "mvimg", "multiview-video": "mvvid"}[modality]
            name = f"id{i:04d}-{suffix}"
            names.append(name)
            if not (out / name / "sequence.json").is_file():
                _sequence(out, name, identity, modality, np.random.default_rng([cfg.seed, 1, i, m_i]), flame, cfg)
            done += 1
            if progress is not None:
                progress(done, total)
    write_dataset_json(out, cfg.flame_model, names, synthetic=asdict(cfg))
    return out


def generate_heldout_set(out: str | Path, identities: int = 4, seed: int = 0, *, image_size: int = 96,
                         eval_frames: int = 13, flame_model: str = "toy", supersample: int = 2,
                         progress: Callable[[int, int], None] | None = None) -> Path:
    """Evaluation sequences of held-out identities (a random stream disjoint from the training set's):
    views ``ref`` (frontal) + ``e00``…``e07`` (:data:`EVAL_DIRECTIONS`), ``eval_frames`` frames."""
    cfg = SyntheticConfig(identities=identities, seed=seed, image_size=image_size, supersample=supersample,
                          flame_model=flame_model)
    cfg.validate()
    out = Path(out)
    flame = Flame(load_flame(flame_model))
    names = []
    for i in range(identities):
        identity = random_identity(np.random.default_rng([seed, 7, i]), flame.num_shape)
        name = f"heldout{i:04d}-eval"
        names.append(name)
        if not (out / name / "sequence.json").is_file():
            rng = np.random.default_rng([seed, 8, i])
            dirs = [(0.0, 5.0)] + EVAL_DIRECTIONS
            _sequence(out, name, identity, "multiview-video", rng, flame, cfg, directions=dirs, frames=eval_frames,
                      view_names=["ref"] + [f"e{k:02d}" for k in range(len(EVAL_DIRECTIONS))], head_motion=3.0,
                      light_front=True)
        if progress is not None:
            progress(i + 1, identities)
    write_dataset_json(out, flame_model, names, heldout=True, seed=seed)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m backend.training.synthetic --out DIR [--identities N] [--size PX] [--heldout N]``."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m backend.training.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--identities", type=int, default=24)
    p.add_argument("--heldout", type=int, default=4, help="held-out evaluation identities (written to OUT/heldout)")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--videos", action="store_true", help="per-view FFV1 videos instead of PNG frames")
    a = p.parse_args(argv)
    out = Path(a.out)
    generate_synthetic_dataset(out / "train", SyntheticConfig(identities=a.identities, seed=a.seed, image_size=a.size,
                                                              video_files=a.videos))
    if a.heldout:
        generate_heldout_set(out / "heldout", a.heldout, a.seed, image_size=a.size)
    print(json.dumps({"train": str(out / "train"), "heldout": str(out / "heldout") if a.heldout else None}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())

