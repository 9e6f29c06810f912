"""Fit checkpoints: ``fit.safetensors`` (every tensor, optimiser moments and RNG included) + ``fit.json``.

Both files are written atomically (temporary name, fsync, rename), safetensors first; the
safetensors metadata repeats what ``fit.json`` says (iteration, settings structure), so the tensors
file alone is authoritative and a crash between the two writes cannot pair tensors with the wrong
iteration. A checkpoint is only written from finite parameters (a diverged fit never overwrites the
last good one).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..fsutil import atomic_path, write_json_atomic

CHECKPOINT_FORMAT = "mvp4d-fit-checkpoint"
CHECKPOINT_VERSION = 1
TENSORS_NAME = "fit.safetensors"
JSON_NAME = "fit.json"


def optimizer_tensors(prefix: str, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    out = {}
    for i, p in enumerate(params):
        for k, v in opt.state.get(p, {}).items():
            out[f"{prefix}.{i}.{k}"] = torch.as_tensor(v).detach().clone()
    return out


def load_optimizer_tensors(prefix: str, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                           tensors: dict[str, torch.Tensor]) -> None:
    for i, p in enumerate(params):
        keys = [n for n in tensors if n.startswith(f"{prefix}.{i}.")]
        if keys:
            opt.state[p] = {n[len(f"{prefix}.{i}."):]: tensors[n].clone() for n in keys}


def save_checkpoint(folder: str | Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Write ``fit.safetensors`` and ``fit.json`` atomically; ``info`` must hold ``iteration``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "time": time.time(), **info}
    meta = {"info": json.dumps(info, sort_keys=True)}
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(folder / TENSORS_NAME) as tmp:
        save_file(contiguous, str(tmp), metadata=meta)
    write_json_atomic(folder / JSON_NAME, info)


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(tensors, info) of the last checkpoint, or None when there is none (or it is unreadable)."""
    path = Path(folder) / TENSORS_NAME
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        info = json.loads(meta.get("info", "{}"))
        if info.get("format") != CHECKPOINT_FORMAT:
            return None
        return load_file(str(path)), info
    except Exception:  # noqa: BLE001 - a damaged checkpoint means starting afresh, not failing
        return None


def rng_tensor(gen: torch.Generator) -> torch.Tensor:
    return gen.get_state().clone()


__all__ = ["save_checkpoint", "load_checkpoint", "optimizer_tensors", "load_optimizer_tensors", "rng_tensor",
           "TENSORS_NAME", "JSON_NAME"]
