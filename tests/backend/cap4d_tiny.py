"""Tiny CAP4D checkpoints in the public file's LDM key scheme, written by the tests (no real weights here)."""

from __future__ import annotations

from pathlib import Path

import torch

from backend.cap4d.config import tiny_upstream_config

from .cap4d_reference import ldm_shapes

KEYS_FILE = Path(__file__).parent.parent / "data" / "cap4d" / "mmdm_checkpoint_keys.txt"
_DTYPES = {"float32": torch.float32, "int64": torch.int64, "bool": torch.bool}


def real_key_shapes() -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """All 830 keys of the public checkpoint with shape and dtype (from the reference key list)."""
    out = {}
    for line in KEYS_FILE.read_text().splitlines():
        if not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        out[key] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), _DTYPES[dtype])
    return out


def meta_checkpoint() -> dict[str, torch.Tensor]:
    """The public checkpoint's keys as meta tensors (shapes and dtypes, no data)."""
    return {k: torch.empty(s, dtype=d, device="meta") for k, (s, d) in real_key_shapes().items()}


def tiny_state(seed: int = 0, geometry: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """A tiny CAP4D state dict: UNet at 32 base channels, the SD VAE at a quarter width, real-layout geometry."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in sorted(ldm_shapes(tiny_upstream_config()).items()):
        std = 0.3 if ".attn1." in key or ".proj_" in key else 0.05
        state[key] = torch.randn(shape, generator=g) * std
    for key, (shape, dtype) in real_key_shapes().items():
        if key.startswith("first_stage_model."):
            small = tuple(s // 4 if s in (128, 256, 512) else s for s in shape)
            t = torch.randn(small, generator=g) * 0.05
            if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key.endswith("norm.weight") \
                    or key.endswith("norm_out.weight"):
                t = 1.0 + t
            state[key] = t
    state["cond_stage_model.pos_encoding.freqs"] = 2.0 ** torch.arange(7, dtype=torch.float32)
    state["logvar"] = torch.zeros(1000)
    if geometry is None:
        geometry = {"props": torch.rand(5223, 3, generator=g) * 2 - 1,
                    "faces": torch.randint(0, 5223, (10316, 3), generator=g),
                    "face_mask": torch.ones(10316, dtype=torch.bool),
                    "faces_uvs": torch.randint(0, 5000, (10316, 3), generator=g)}
    for name, t in geometry.items():
        state[f"cond_stage_model.renderer.{name}"] = t
    return state


def write_tiny_checkpoint(path: Path, seed: int = 0, geometry: dict[str, torch.Tensor] | None = None) -> Path:
    torch.save(tiny_state(seed, geometry), path)
    return path


def tiny_cap4d_scene(folder: Path, azimuths: tuple[float, ...]):
    """A tiny random CAP4D checkpoint on the FLAME-layout head and a 64 px ring at ``azimuths`` (views named
    ``view0``, ``view1``, ...): ``(flame, components, ring)`` for generator tests."""
    from backend.cameras import CameraRing
    from backend.cap4d.weights import load_cap4d
    from backend.flame import Flame

    from .cap4d_flame import cap4d_geometry, flame_layout_head
    from .test_cap4d_maps import _camera

    model = flame_layout_head()
    comp = load_cap4d(write_tiny_checkpoint(folder / "t.ckpt", geometry=cap4d_geometry(model)))
    ring = CameraRing.from_cameras([_camera(64, az) for az in azimuths])
    for i, c in enumerate(ring.cameras):
        c.name = f"view{i}"
    return Flame(model), comp, ring
