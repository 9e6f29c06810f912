"""CAP4D weights: convert the public ``.ckpt`` to a safetensors folder, check one, load one.

A CAP4D weights folder (:data:`LAYOUT`)::

    unet/                      config.json (_class_name MMDMUNet) + diffusion_pytorch_model.safetensors
    vae/                       config.json (AutoencoderKL, scaling_factor 0.18215) + safetensors
    conditioning.safetensors   props (5223×3), faces, face_mask, faces_uvs: the pose-map geometry
    cap4d.json                 {"format": "cap4d-mmdm", "format_version": 1, "licence": ..., ...}

``python -m backend weights convert --from cap4d_mmdm_100k.ckpt --out DIR`` writes it once (atomically:
built next to DIR and renamed, never half-written; an existing DIR is never touched). Generation then
reads only safetensors. :func:`load_cap4d` also accepts the ``.ckpt`` itself (converted in memory each
time, slower) so a user can try the file before converting it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import MVP4DError
from ..fsutil import atomic_dir, write_json_atomic
from ..mmvdm.weights import _compare, _expected_shapes, _stored_shapes
from . import LICENCE
from .checkpoint import (
    CheckpointParts,
    read_checkpoint,
    split_checkpoint,
    unet_upstream_config_from_shapes,
    unet_state_from_ldm,
    vae_config_from_shapes,
    vae_state_from_ldm,
)
from .config import CONDITION_CHANNELS, unet_config_from_upstream
from .unet import MMDMUNet

__all__ = ["FORMAT", "FORMAT_VERSION", "LAYOUT", "CAP4DComponents", "models_from_checkpoint", "convert_checkpoint",
           "check_weights", "load_cap4d"]

FORMAT = "cap4d-mmdm"
FORMAT_VERSION = 1
LAYOUT = ("a CAP4D weights folder holds unet/ and vae/ (config.json + diffusion_pytorch_model.safetensors), "
          "conditioning.safetensors and cap4d.json; make one with 'python -m backend weights convert --from "
          "cap4d_mmdm_100k.ckpt --out DIR'")
_WEIGHTS = "diffusion_pytorch_model.safetensors"
_RENDERER = ("props", "faces", "face_mask", "faces_uvs")


@dataclass
class CAP4DComponents:
    """What :func:`load_cap4d` returns."""

    unet: MMDMUNet
    vae: AutoencoderKL
    geometry: dict[str, torch.Tensor]  # props, faces, face_mask, faces_uvs
    info: dict[str, Any] = field(default_factory=dict)


def _missing(what: str) -> MVP4DError:
    return MVP4DError("WEIGHTS_MISSING", what, LAYOUT[0].upper() + LAYOUT[1:] + ".")


def _check_geometry(geom: dict[str, torch.Tensor], where: str) -> None:
    for name in _RENDERER:
        if name not in geom:
            raise MVP4DError("WEIGHTS_MISMATCH", f"{where} lacks tensor {name}")
    props, faces, mask = geom["props"], geom["faces"], geom["face_mask"]
    if props.ndim != 2 or props.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3 or mask.shape != faces.shape[:1]:
        raise MVP4DError("WEIGHTS_MISMATCH", f"{where}: props {list(props.shape)}, faces {list(faces.shape)}, "
                         f"face_mask {list(mask.shape)} do not form a template mesh")


def models_from_checkpoint(parts: CheckpointParts, dtype: torch.dtype | None = None,
                           num_views: int = 8) -> tuple[MMDMUNet, AutoencoderKL]:
    """Build the UNet and VAE from a split checkpoint (every key and shape checked; built on meta, assigned)."""
    upstream = unet_upstream_config_from_shapes(parts.unet, num_views)
    if upstream["condition_channels"] != CONDITION_CHANNELS:
        raise MVP4DError("WEIGHTS_MISMATCH", f"key model.diffusion_model.cond_linear.weight takes "
                         f"{upstream['condition_channels']} conditioning channels; CAP4D's maps have {CONDITION_CHANNELS}")
    unet_cfg = unet_config_from_upstream(upstream)
    vae_cfg = vae_config_from_shapes(parts.vae)
    if vae_cfg["latent_channels"] != unet_cfg["in_channels"]:
        raise MVP4DError("WEIGHTS_MISMATCH", f"the VAE has {vae_cfg['latent_channels']} latent channels, the UNet "
                         f"takes {unet_cfg['in_channels']} (key model.diffusion_model.input_blocks.0.0.weight)")
    with torch.device("meta"):
        unet = MMDMUNet.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
    unet_state = unet_state_from_ldm(parts.unet, unet_cfg, strict_shapes=unet)
    vae_state = vae_state_from_ldm(parts.vae, vae_cfg, strict_shapes=vae)
    if dtype is not None:
        unet_state = {k: v.to(dtype) for k, v in unet_state.items()}
        vae_state = {k: v.to(dtype) for k, v in vae_state.items()}
    unet.load_state_dict(unet_state, strict=True, assign=True)
    vae.load_state_dict(vae_state, strict=True, assign=True)
    return unet.eval(), vae.eval()


def convert_checkpoint(src: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """``.ckpt`` -> CAP4D weights folder at ``out`` (must not exist). Returns the folder's ``cap4d.json``."""
    src, out = Path(src), Path(out)
    if out.exists():
        raise MVP4DError("BAD_INPUT", f"{out} already exists; nothing was written",
                         "Choose a new folder for --out (an existing one is never overwritten).")
    parts = split_checkpoint(read_checkpoint(src))
    _check_geometry(parts.renderer, str(src))
    unet, vae = models_from_checkpoint(parts, dtype)
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "source": src.name, "licence": LICENCE,
            "dtype": str(dtype).removeprefix("torch."), "dropped_keys": parts.dropped,
            "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "vae_parameters": sum(p.numel() for p in vae.parameters())}
    with atomic_dir(out) as tmp:
        unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)
        vae.save_pretrained(str(tmp / "vae"), safe_serialization=True)
        save_file({k: parts.renderer[k].contiguous().clone() for k in _RENDERER}, str(tmp / "conditioning.safetensors"))
        write_json_atomic(tmp / "cap4d.json", info)
    return {**info, "out": str(out)}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise _missing(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MVP4DError("WEIGHTS_INVALID", f"{path} is not valid JSON ({exc})", LAYOUT) from exc


def check_weights(path: str | Path) -> dict[str, Any]:
    """Validate a CAP4D folder from configs and safetensors headers (no tensor data read) or a ``.ckpt``."""
    path = Path(path)
    if path.is_file():
        parts = split_checkpoint(read_checkpoint(path))
        _check_geometry(parts.renderer, str(path))
        models_from_checkpoint(parts)
        return {"info": {"format": "cap4d-ckpt", "source": path.name, "licence": LICENCE}, "kind": "ckpt"}
    if not path.is_dir():
        raise _missing(f"CAP4D weights {path} do not exist")
    info = _read_json(path / "cap4d.json")
    if info.get("format") != FORMAT or int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise MVP4DError("WEIGHTS_MISMATCH", f"{path / 'cap4d.json'} has format {info.get('format')!r} version "
                         f"{info.get('format_version')!r}; this backend reads {FORMAT!r} up to {FORMAT_VERSION}", LAYOUT)
    cfgs = {}
    for sub, cls in (("unet", MMDMUNet), ("vae", AutoencoderKL)):
        cfg = _read_json(path / sub / "config.json")
        if cfg.get("_class_name") != cls.__name__:
            raise MVP4DError("WEIGHTS_MISMATCH", f"{path / sub} holds a {cfg.get('_class_name')!r}, not {cls.__name__}",
                             LAYOUT)
        if not (path / sub / _WEIGHTS).is_file():
            raise _missing(f"{path / sub / _WEIGHTS} does not exist")
        shapes, _ = _stored_shapes([path / sub / _WEIGHTS])
        _compare(_expected_shapes(cls, cfg, path / sub), shapes, path / sub)
        cfgs[sub] = cfg
    if not (path / "conditioning.safetensors").is_file():
        raise _missing(f"{path / 'conditioning.safetensors'} does not exist")
    return {"info": info, "kind": "folder", **cfgs}


def load_cap4d(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
               vae_dtype: torch.dtype | None = None, num_views: int = 8) -> CAP4DComponents:
    """UNet, VAE and conditioning geometry from a CAP4D folder or the ``.ckpt`` (see the module docstring)."""
    path = Path(path)
    checked = check_weights(path) if path.is_dir() else None
    if checked is None:
        if not path.is_file():
            raise _missing(f"CAP4D weights {path} do not exist")
        parts = split_checkpoint(read_checkpoint(path))
        _check_geometry(parts.renderer, str(path))
        unet, vae = models_from_checkpoint(parts, num_views=num_views)
        geom = {k: parts.renderer[k].clone() for k in _RENDERER}
        info = {"format": "cap4d-ckpt", "source": path.name, "licence": LICENCE}
    else:
        common = dict(use_safetensors=True, local_files_only=True)
        try:
            unet = MMDMUNet.from_pretrained(str(path), subfolder="unet", **common)
            vae = AutoencoderKL.from_pretrained(str(path), subfolder="vae", **common)
            geom = load_file(str(path / "conditioning.safetensors"))
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            raise MVP4DError("WEIGHTS_INVALID", f"could not load the weights in {path}: {str(exc)[:300]}", LAYOUT) from exc
        _check_geometry(geom, str(path / "conditioning.safetensors"))
        info = checked["info"]
    unet, vae = unet.to(device), vae.to(device)
    if dtype is not None and dtype != unet.dtype:
        unet = unet.to(dtype)
    if (vae_dtype or dtype) is not None and (vae_dtype or dtype) != vae.dtype:
        vae = vae.to(vae_dtype or dtype)
    unet.eval(), vae.eval()
    return CAP4DComponents(unet, vae, geom, info)
