"""Golden fixtures: check the UNet against outputs of CAP4D's own network without its weights.

A fixture is one safetensors file (e.g. ``tests/data/cap4d/tiny_golden.safetensors``):

* metadata ``config``: the UNet in upstream vocabulary (:func:`~backend.cap4d.config.unet_config_from_upstream`),
* metadata ``shapes``: every LDM key (``model.diffusion_model.*``) with its shape,
* metadata ``weight_rule``: how the weights are drawn from the key list (``order`` "sorted keys", one
  ``torch.Generator().manual_seed(seed)``, ``torch.randn(shape, generator=g) * std`` with ``large_std``
  for keys containing any of ``large_if_key_contains``),
* tensors ``x``, ``z_input``, ``pos_enc``, ``t``, ``ref_mask`` (inputs) and ``out`` (expected output).

:func:`evaluate_fixture` rebuilds the weights, converts them with the same code path as a real
checkpoint (:func:`~backend.cap4d.weights.unet_state_from_ldm`), runs the UNet in float32 and reports the
largest absolute error. :func:`write_fixture` writes a file in the same format (tests use it with
outputs from an independent reference implementation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import MVP4DError
from ..fsutil import atomic_path
from .config import unet_config_from_upstream
from .unet import MMDMUNet
from .checkpoint import unet_state_from_ldm

__all__ = ["TOLERANCE", "draw_weights", "read_fixture", "evaluate_fixture", "write_fixture", "build_unet"]

#: a fixture passes when the largest absolute error is at most this
TOLERANCE = 1e-4
_INPUTS = ("x", "z_input", "pos_enc", "t", "ref_mask")


def draw_weights(shapes: Mapping[str, list[int]], rule: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The fixture's weights: keys in sorted order, one seeded generator, ``randn * std`` per key."""
    if rule.get("order", "sorted keys") != "sorted keys":
        raise MVP4DError("BAD_INPUT", f"fixture weight_rule order {rule.get('order')!r} is not 'sorted keys'")
    g = torch.Generator().manual_seed(int(rule["seed"]))
    large = tuple(rule.get("large_if_key_contains", ()))
    out = {}
    for key in sorted(shapes):
        std = float(rule["large_std"]) if any(s in key for s in large) else float(rule["std"])
        out[key] = torch.randn(tuple(shapes[key]), generator=g) * std
    return out


def read_fixture(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata with ``config``/``shapes``/``weight_rule`` parsed, tensors) of a fixture file."""
    path = Path(path)
    if not path.is_file():
        raise MVP4DError("BAD_INPUT", f"fixture {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        parsed = {k: json.loads(meta[k]) for k in ("config", "shapes", "weight_rule")}
    except (SafetensorError, OSError) as exc:
        raise MVP4DError("WEIGHTS_INVALID", f"fixture {path} is not a readable safetensors file ({exc})") from exc
    except (KeyError, ValueError) as exc:
        raise MVP4DError("BAD_INPUT", f"fixture {path} lacks JSON metadata config/shapes/weight_rule ({exc})") from exc
    missing = [k for k in (*_INPUTS, "out") if k not in tensors]
    if missing:
        raise MVP4DError("BAD_INPUT", f"fixture {path} lacks tensors {', '.join(missing)}")
    return parsed, tensors


def build_unet(upstream_config: Mapping[str, Any], ldm_state: Mapping[str, torch.Tensor]) -> MMDMUNet:
    """An ``MMDMUNet`` for ``upstream_config`` holding ``ldm_state`` (LDM names, prefix included)."""
    cfg = unet_config_from_upstream(upstream_config)
    with torch.device("meta"):
        unet = MMDMUNet.from_config(cfg)
    state = unet_state_from_ldm(ldm_state, cfg, strict_shapes=unet)
    unet.load_state_dict(state, strict=True, assign=True)
    return unet.eval()


@torch.no_grad()
def evaluate_fixture(path: str | Path) -> dict[str, Any]:
    """Run the UNet on a fixture's inputs; return ``max_abs_error`` against its ``out`` and ``passed``."""
    meta, t = read_fixture(path)
    unet = build_unet(meta["config"], draw_weights(meta["shapes"], meta["weight_rule"])).float()
    out = unet(t["x"].float(), t["t"].long(), t["z_input"].float(), t["ref_mask"], t["pos_enc"].float())
    if out.shape != t["out"].shape:
        raise MVP4DError("WEIGHTS_MISMATCH", f"output shape {list(out.shape)} != fixture {list(t['out'].shape)}")
    err = float((out - t["out"].float()).abs().max())
    return {"fixture": str(path), "max_abs_error": err, "tolerance": TOLERANCE, "passed": err <= TOLERANCE,
            "views": int(t["x"].shape[1]), "batch": int(t["x"].shape[0]),
            "parameters": sum(p.numel() for p in unet.parameters())}


def write_fixture(path: str | Path, config: Mapping[str, Any], shapes: Mapping[str, list[int]],
                  rule: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Path:
    """Write a fixture file (atomically) in the shared format."""
    path = Path(path)
    meta = {"config": json.dumps(dict(config)), "shapes": json.dumps({k: list(v) for k, v in shapes.items()}),
            "weight_rule": json.dumps(dict(rule))}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    return path
