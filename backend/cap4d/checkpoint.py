"""Reading CAP4D's ``.ckpt`` safely and mapping every key of it to our modules.

The public file ``cap4d_mmdm_100k.ckpt`` is a flat pickled fp32 state dict with 830 keys:

==============================================  =====  ==================================================
prefix                                          keys   goes to
==============================================  =====  ==================================================
``model.diffusion_model.`` (UNet + cond_linear)  576   :class:`~backend.cap4d.unet.MMDMUNet` (diffusers'
                                                       ``convert_ldm_unet_checkpoint`` + ``cond_linear``)
``first_stage_model.`` (SD VAE)                  248   ``AutoencoderKL`` (``convert_ldm_vae_checkpoint``)
``cond_stage_model.renderer.*``                    4   the conditioning geometry (props, faces, ...)
``cond_stage_model.pos_encoding.freqs``            1   checked to be 2**k (k = 0..6), then implied
``logvar``                                         1   training only (learned loss weights): dropped
==============================================  =====  ==================================================

Reading uses ``torch.load(weights_only=True, mmap=True)`` only: the restricted unpickler builds tensors
and plain containers and refuses anything else, so a file carrying code fails with ``WEIGHTS_INVALID``
before any of it runs. Every key must be accounted for; anything missing, left over or of the wrong
shape is ``WEIGHTS_MISMATCH`` naming the key.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from torch import nn

from ..errors import MVP4DError
from .config import SCALE_FACTOR

__all__ = [
    "UNET_PREFIX", "VAE_PREFIX", "RENDERER_KEYS", "FREQS_KEY", "DROPPED_KEYS", "CheckpointParts",
    "read_checkpoint", "split_checkpoint", "unet_upstream_config_from_shapes", "vae_config_from_shapes",
    "unet_state_from_ldm", "vae_state_from_ldm",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
RENDERER_KEYS = {"props": "cond_stage_model.renderer.props", "faces": "cond_stage_model.renderer.faces",
                 "face_mask": "cond_stage_model.renderer.face_mask",
                 "faces_uvs": "cond_stage_model.renderer.faces_uvs"}
FREQS_KEY = "cond_stage_model.pos_encoding.freqs"
DROPPED_KEYS = ("logvar",)
_HINT_FILE = ("Download cap4d_mmdm_100k.ckpt again from the Hugging Face repo ftaubner/cap4d "
              "(3.6 GB) and convert it with 'python -m backend weights convert'.")


def _mismatch(msg: str) -> MVP4DError:
    return MVP4DError("WEIGHTS_MISMATCH", msg, "This is not CAP4D's MMDM checkpoint. " + _HINT_FILE)


def _invalid(msg: str) -> MVP4DError:
    return MVP4DError("WEIGHTS_INVALID", msg, _HINT_FILE)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat state dict of a ``.ckpt`` (memory-mapped; a Lightning ``state_dict`` wrapper is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise MVP4DError("WEIGHTS_MISSING", f"checkpoint {path} does not exist", _HINT_FILE)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False; never pass that on, name only what was refused
        why = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        if why:
            raise _invalid(f"{path} holds objects other than tensors, refused without running them "
                           f"({why[0][:200]})") from exc
        raise _invalid(f"{path} is not a readable PyTorch checkpoint (truncated or damaged)") from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise _invalid(f"{path} is not a readable PyTorch checkpoint (truncated or damaged? {str(exc)[:200]})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise _invalid(f"{path} does not hold a state dict (got {type(obj).__name__})")
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise _invalid(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
    return obj


@dataclass
class CheckpointParts:
    """A CAP4D checkpoint split by destination (LDM names kept; prefixes included)."""

    unet: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor]
    renderer: dict[str, torch.Tensor]  # props, faces, face_mask, faces_uvs
    dropped: list[str]


def split_checkpoint(state: Mapping[str, torch.Tensor]) -> CheckpointParts:
    """Assign every key to a destination; unknown keys or missing parts are ``WEIGHTS_MISMATCH``."""
    unet = {k: v for k, v in state.items() if k.startswith(UNET_PREFIX)}
    vae = {k: v for k, v in state.items()
           if k.startswith(VAE_PREFIX) and not k.startswith(VAE_PREFIX + "loss.")}
    renderer = {name: state[k] for name, k in RENDERER_KEYS.items() if k in state}
    known = set(unet) | set(vae) | set(RENDERER_KEYS.values()) | {FREQS_KEY, *DROPPED_KEYS}
    unknown = sorted(k for k in state if k not in known and not k.startswith(VAE_PREFIX + "loss."))
    if unknown:
        extra = " (a text encoder: this is a Stable Diffusion checkpoint, not CAP4D's)" if any(
            k.startswith("cond_stage_model.model.") or k.startswith("cond_stage_model.transformer.")
            for k in unknown) else ""
        raise _mismatch(f"unexpected key {unknown[0]}{extra} (+{len(unknown) - 1} more)")
    if UNET_PREFIX + "cond_linear.weight" not in unet:
        raise _mismatch(f"key {UNET_PREFIX}cond_linear.weight is missing (a plain Stable Diffusion UNet?)")
    if not vae:
        raise _mismatch(f"no {VAE_PREFIX}* keys: the VAE is missing")
    for name, key in RENDERER_KEYS.items():
        if name not in renderer:
            raise _mismatch(f"key {key} is missing")
    if FREQS_KEY in state:
        f = state[FREQS_KEY]
        if not f.is_meta and not torch.allclose(f.float().cpu(), 2.0 ** torch.arange(f.numel(), dtype=torch.float32)):
            raise _mismatch(f"key {FREQS_KEY} is not 2**k; this conditioning encoding is not supported")
    return CheckpointParts(unet, vae, renderer, [k for k in (FREQS_KEY, *DROPPED_KEYS) if k in state])


def _shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise _mismatch(f"key {key} is missing")
    return tuple(state[key].shape)


def unet_upstream_config_from_shapes(unet: Mapping[str, torch.Tensor], num_views: int = 8) -> dict[str, Any]:
    """The UNet's upstream config read off the tensor shapes of an LDM UNet state dict.

    Heads: 64 channels each (the public model's), or the base width for narrower test checkpoints.
    """
    p = UNET_PREFIX
    mc = _shape(unet, p + "input_blocks.0.0.weight")[0]
    blocks = sorted({int(k[len(p + "input_blocks."):].split(".")[0]) for k in unet if k.startswith(p + "input_blocks.")})
    downs = [i for i in blocks if p + f"input_blocks.{i}.0.op.weight" in unet]
    nres = (downs[0] - 1) if downs else len(blocks) - 1
    levels = len(downs) + 1
    mults, att = [], []
    for lvl in range(levels):
        first = 1 + lvl * (nres + 1)
        mults.append(_shape(unet, p + f"input_blocks.{first}.0.out_layers.3.weight")[0] // mc)
        if p + f"input_blocks.{first}.1.proj_in.weight" in unet:
            att.append(2 ** lvl)
    cond = _shape(unet, p + "cond_linear.weight")
    return dict(image_size=64, time_steps=num_views, temporal_mode="3d", in_channels=_shape(unet, p + "input_blocks.0.0.weight")[1],
                out_channels=_shape(unet, p + "out.2.weight")[0], model_channels=mc, condition_channels=cond[1],
                attention_resolutions=sorted(att, reverse=True), num_res_blocks=nres, channel_mult=mults, num_head_channels=min(64, mc),
                use_spatial_transformer=True, use_linear_in_transformer=True, transformer_depth=1, context_dim=1024)


def vae_config_from_shapes(vae: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """A diffusers ``AutoencoderKL`` config read off the shapes of an LDM VAE state dict."""
    p = VAE_PREFIX
    levels = sorted({int(k[len(p + "encoder.down."):].split(".")[0]) for k in vae if k.startswith(p + "encoder.down.")})
    nres = len({k.split(".")[5] for k in vae if k.startswith(p + "encoder.down.0.block.")})
    outs = [_shape(vae, p + f"encoder.down.{i}.block.0.conv1.weight")[0] for i in levels]
    return dict(in_channels=_shape(vae, p + "encoder.conv_in.weight")[1], out_channels=_shape(vae, p + "decoder.conv_out.weight")[0],
                down_block_types=["DownEncoderBlock2D"] * len(outs), up_block_types=["UpDecoderBlock2D"] * len(outs),
                block_out_channels=outs, layers_per_block=nres, act_fn="silu",
                latent_channels=_shape(vae, p + "quant_conv.weight")[0] // 2, norm_num_groups=32,
                sample_size=512, scaling_factor=SCALE_FACTOR)


def _check_against(converted: dict[str, torch.Tensor], model: nn.Module, what: str,
                   source: Mapping[str, torch.Tensor], names: dict[int, str]) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in expected.items():
        if key not in converted or converted[key] is None:
            raise _mismatch(f"{what}: no tensor for {key} in the checkpoint")
        if tuple(converted[key].shape) != shape:
            src = names.get(id(converted[key]), key)
            raise _mismatch(f"{what}: key {src} has shape {list(converted[key].shape)}, the model expects {list(shape)}")
    extra = sorted(set(converted) - set(expected))
    if extra:
        raise _mismatch(f"{what}: key {names.get(id(converted[extra[0]]), extra[0])} has no place in the model")
    used = {id(v) for v in converted.values()}
    unused = [k for k, v in source.items() if id(v) not in used]
    reshaped = len(converted) - sum(1 for v in converted.values() if id(v) in names)
    if len(unused) > reshaped:  # the VAE converter reshapes a few attention weights (new tensors)
        raise _mismatch(f"{what}: key {unused[0]} was not used by the conversion")


def unet_state_from_ldm(state: Mapping[str, torch.Tensor], diffusers_cfg: Mapping[str, Any],
                        strict_shapes: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """LDM UNet keys (``model.diffusion_model.*``) -> ``MMDMUNet`` keys (diffusers' converter + cond_linear).

    With ``strict_shapes`` (a model, e.g. on the meta device) every key and shape is checked.
    """
    src = {k: v for k, v in state.items() if k.startswith(UNET_PREFIX)}
    out = convert_ldm_unet_checkpoint(dict(src), dict(diffusers_cfg))
    for name in ("weight", "bias"):
        key = f"{UNET_PREFIX}cond_linear.{name}"
        if key in src:
            out[f"cond_linear.{name}"] = src[key]
    out = {k: v for k, v in out.items() if v is not None}
    if strict_shapes is not None:
        _check_against(out, strict_shapes, "UNet", src, {id(v): k for k, v in src.items()})
    return out


def vae_state_from_ldm(state: Mapping[str, torch.Tensor], vae_cfg: Mapping[str, Any],
                       strict_shapes: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """LDM VAE keys (``first_stage_model.*``) -> diffusers ``AutoencoderKL`` keys."""
    src = {k: v for k, v in state.items() if k.startswith(VAE_PREFIX)}
    out = {k: v for k, v in convert_ldm_vae_checkpoint(dict(src), dict(vae_cfg)).items() if v is not None}
    if strict_shapes is not None:
        _check_against(out, strict_shapes, "VAE", src, {id(v): k for k, v in src.items()})
    return out
