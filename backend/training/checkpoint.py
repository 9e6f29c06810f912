"""Training checkpoints in safetensors (no pickle), the optimizer state included, and EMA weights.

A checkpoint is a folder ``<run>/checkpoints/step-NNNNNNNN/`` (N = optimizer steps done), written
atomically (``fsutil.atomic_dir``: it exists complete or not at all)::

    model.safetensors       the transformer's state dict (float32 master weights); metadata "config" = its
                            diffusers config (JSON)
    optimizer.safetensors   every tensor of ``optimizer.state_dict()["state"]`` as ``state.<param>.<key>``;
                            metadata "param_groups" (JSON, tuples as lists), "scalars" (non-tensor state)
    ema.safetensors         EMA weights (only with EMA), metadata "decay", "start_step", "updates"
    state.json              {"step": N, "seed", "stage", "config_fingerprint", "world_size", "time", ...}

:func:`load_checkpoint` restores model, optimizer and EMA exactly (bit for bit), so training resumed from
step N continues the same curve as an uninterrupted run (the data, timesteps and noise of a step are
functions of (seed, step, micro-step, rank) only — see :mod:`backend.training.trainer`).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import MVP4DError
from ..fsutil import atomic_dir, remove_inside, write_json_atomic

__all__ = ["EMA", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints",
           "optimizer_to_safetensors", "optimizer_from_safetensors"]

_STEP_RE = re.compile(r"^step-(\d+)$")


class EMA:
    """Exponential moving average of the trainable parameters (float32 shadow copy).

    ``update`` after every optimizer step: shadow ← decay·shadow + (1 − decay)·param, with the decay
    warmed up as min(decay, (1 + n) / (10 + n)) over the n updates so far (the usual warm-up, so early
    weights do not dominate); before ``start_step`` the shadow just copies the weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999, start_step: int = 0):
        if not 0.0 < float(decay) < 1.0:
            raise MVP4DError("BAD_INPUT", f"ema.decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.start_step = int(start_step)
        self.updates = 0
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        params = dict(model.named_parameters())
        if step < self.start_step:
            for n, s in self.shadow.items():
                s.copy_(params[n].detach().float())
            return
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for n, s in self.shadow.items():
            s.lerp_(params[n].detach().float(), 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        for n, s in self.shadow.items():
            params[n].copy_(s.to(params[n].dtype))

    def to(self, device) -> "EMA":
        self.shadow = {n: s.to(device) for n, s in self.shadow.items()}
        return self

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        meta = {"decay": repr(self.decay), "start_step": str(self.start_step), "updates": str(self.updates)}
        return {n: s.detach().cpu().contiguous() for n, s in self.shadow.items()}, meta

    def load(self, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        missing = sorted(set(self.shadow) - set(tensors))
        if missing:
            raise MVP4DError("WEIGHTS_MISMATCH", f"EMA checkpoint lacks {missing[0]}")
        dev = next(iter(self.shadow.values())).device if self.shadow else "cpu"
        self.shadow = {n: tensors[n].to(dev, torch.float32) for n in self.shadow}
        self.updates = int(meta.get("updates", 0))


# ------------------------------------------------------------------------------------------- optimizer
def optimizer_to_safetensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    meta = {"format": "torch-optimizer-state", "class": type(optimizer).__name__,
            "param_groups": json.dumps(groups), "scalars": json.dumps(scalars)}
    return tensors, meta


def optimizer_from_safetensors(tensors: dict[str, torch.Tensor], meta: dict[str, str],
                               template: dict[str, Any]) -> dict[str, Any]:
    """The ``state_dict`` to load, with tuple-valued group entries restored from ``template``'s groups."""
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    for name, v in json.loads(meta.get("scalars", "{}")).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = v
    groups = json.loads(meta["param_groups"])
    for g, tg in zip(groups, template["param_groups"]):
        for k, v in tg.items():
            if isinstance(v, tuple) and isinstance(g.get(k), list):
                g[k] = tuple(g[k])
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------------------- folders
def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    cps = list_checkpoints(run_dir)
    return cps[-1][1] if cps else None


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    ema: EMA | None, state: dict[str, Any], keep: int | None = None) -> Path:
    """Write ``<run_dir>/checkpoints/step-<step>`` atomically; keep the newest ``keep`` (None: all)."""
    path = Path(run_dir) / "checkpoints" / f"step-{int(step):08d}"
    config = {k: v for k, v in dict(getattr(model, "config", {})).items() if not str(k).startswith("_")}
    with atomic_dir(path, replace=True) as tmp:  # a step saved again (after a resume) is ours to replace
        sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(sd, str(tmp / "model.safetensors"), metadata={"config": json.dumps(config, default=str)})
        t, meta = optimizer_to_safetensors(optimizer)
        save_file(t, str(tmp / "optimizer.safetensors"), metadata=meta)
        if ema is not None:
            t, meta = ema.state()
            save_file(t, str(tmp / "ema.safetensors"), metadata=meta)
        write_json_atomic(tmp / "state.json", {**state, "step": int(step), "time": time.time()})
    if keep:
        for _, old in list_checkpoints(run_dir)[:-int(keep)]:
            remove_inside(old, old.parent)
    return path


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(path)), meta
    except Exception as exc:  # noqa: BLE001
        raise MVP4DError("WEIGHTS_MISMATCH", f"checkpoint file {path} cannot be read ({exc})") from exc


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    ema: EMA | None) -> dict[str, Any]:
    """Restore model (strict), optimizer and EMA from a checkpoint folder; returns its state.json."""
    path = Path(path)
    if not (path / "state.json").is_file():
        raise MVP4DError("WEIGHTS_MISSING", f"{path} is not a training checkpoint (no state.json)")
    state = json.loads((path / "state.json").read_text())
    sd, _ = _load(path / "model.safetensors")
    missing, unexpected = set(model.state_dict()) - set(sd), set(sd) - set(model.state_dict())
    if missing or unexpected:
        raise MVP4DError("WEIGHTS_MISMATCH", f"checkpoint {path.name} does not fit the model: missing "
                         f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}",
                         "Resume with the same model config the run started with.")
    model.load_state_dict(sd, strict=True)
    if optimizer is not None:
        t, meta = _load(path / "optimizer.safetensors")
        optimizer.load_state_dict(optimizer_from_safetensors(t, meta, optimizer.state_dict()))
    if ema is not None:
        if not (path / "ema.safetensors").is_file():
            raise MVP4DError("WEIGHTS_MISMATCH", f"checkpoint {path.name} has no EMA weights but EMA is enabled")
        t, meta = _load(path / "ema.safetensors")
        ema.load(t, meta)
    return state
