"""MMVDM weights: build a folder from a local CogVideoX-2B diffusers folder, validate and load one.

An MMVDM weights folder (:data:`LAYOUT`)::

    transformer/   config.json (_class_name MMVDMTransformer) + diffusion_pytorch_model*.safetensors
                   (one file, or shards + diffusion_pytorch_model.safetensors.index.json)
    vae/           config.json (AutoencoderKLCogVideoX) + safetensors, copied from CogVideoX-2B
    scheduler/     scheduler_config.json (CogVideoXDDIMScheduler: v-prediction, zero terminal SNR, ...)
    mmvdm.json     {"format": "mmvdm", "format_version": 1, ...}

Only local folders and safetensors are read (``local_files_only=True``, ``use_safetensors=True``); pickled
``.bin`` weights are never loaded and the hub is never contacted. Every tensor's name and shape is checked
against the config from the safetensors headers *before* loading, so a mismatch is reported as
``WEIGHTS_MISMATCH`` naming the tensor instead of a diffusers traceback, and no parameter can be left
uninitialised or on the meta device.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLCogVideoX
from safetensors import SafetensorError, safe_open

from ..errors import MVP4DError
from ..fsutil import atomic_dir, write_json_atomic
from .attention import DEFAULT_ATTENTION_SCALE_MODE
from .configs import estimate_memory, mmvdm_2b_config, tiny_config
from .embeddings import initial_reference_temporal
from .transformer import MMVDMTransformer

__all__ = [
    "FORMAT", "FORMAT_VERSION", "LAYOUT", "MMVDMComponents", "build_mmvdm_from_cogvideox", "save_mmvdm",
    "mmvdm_state_from_cogvideox",
    "load_mmvdm", "check_weights", "mmvdm_2b_config", "tiny_config", "estimate_memory", "init_random_mmvdm",
]

log = logging.getLogger(__name__)

FORMAT = "mmvdm"
FORMAT_VERSION = 1
LAYOUT = ("an MMVDM weights folder holds transformer/ (config.json + *.safetensors), vae/ (config.json + "
          "*.safetensors), scheduler/scheduler_config.json and mmvdm.json; build one from a local CogVideoX-2B "
          "diffusers folder with backend.mmvdm.weights.build_mmvdm_from_cogvideox")
_COGVIDEOX_LAYOUT = ("a CogVideoX-2B diffusers folder holds transformer/, vae/ and scheduler/ (text_encoder/ is not "
                     "needed), each with its config and safetensors weights")
_WEIGHTS = "diffusion_pytorch_model"


@dataclass
class MMVDMComponents:
    """What ``load_mmvdm`` returns. ``scheduler_config`` feeds ``CogVideoXDDIMScheduler.from_config``."""

    transformer: MMVDMTransformer
    vae: AutoencoderKLCogVideoX
    scheduler_config: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)  # mmvdm.json


# ------------------------------------------------------------------------------------------------ helpers
def _missing(what: str, hint: str = LAYOUT) -> MVP4DError:
    return MVP4DError("WEIGHTS_MISSING", what, hint[0].upper() + hint[1:] + ".")


def _mismatch(what: str, hint: str | None = None) -> MVP4DError:
    return MVP4DError("WEIGHTS_MISMATCH", what, hint)


def _read_json(path: Path, hint: str = LAYOUT) -> dict[str, Any]:
    if not path.is_file():
        raise _missing(f"{path} does not exist", hint)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _mismatch(f"{path} is not valid JSON ({exc})") from exc


def _safetensors_files(folder: Path, allow_variants: bool = False) -> list[Path]:
    """The safetensors files of one diffusers model folder (index first, then the single file)."""
    candidates = [f"{_WEIGHTS}.safetensors"]
    if allow_variants:
        candidates += sorted(p.name[: -len(".index.json")] for p in folder.glob(f"{_WEIGHTS}.*.safetensors.index.json"))
        candidates += sorted(p.name for p in folder.glob(f"{_WEIGHTS}.*.safetensors") if "-of-" not in p.name)
    for name in candidates:
        index = folder / f"{name}.index.json"
        if index.is_file():
            weight_map = _read_json(index).get("weight_map", {})
            files = sorted({folder / f for f in weight_map.values()})
            for f in files:
                if not f.is_file():
                    raise _missing(f"shard {f} listed in {index.name} does not exist")
            return files
        if (folder / name).is_file():
            return [folder / name]
    extra = " (pickled .bin weights are never loaded; convert them to safetensors)" if any(folder.glob("*.bin")) else ""
    raise _missing(f"no {_WEIGHTS}.safetensors (or its shard index) in {folder}{extra}")


def _stored_shapes(files: list[Path]) -> tuple[dict[str, tuple[int, ...]], torch.dtype | None]:
    """Tensor shapes from the safetensors headers (no tensor data read) and the first floating dtype."""
    shapes: dict[str, tuple[int, ...]] = {}
    dtype = None
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():
                    sl = st.get_slice(name)
                    shapes[name] = tuple(sl.get_shape())
                    if dtype is None:
                        dtype = _DTYPES.get(sl.get_dtype())
        except (SafetensorError, OSError) as exc:
            raise _mismatch(f"{f} is not a readable safetensors file ({exc})") from exc
    return shapes, dtype


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _expected_shapes(model_cls, config: dict[str, Any], where: Path) -> dict[str, tuple[int, ...]]:
    try:
        with torch.device("meta"):
            model = model_cls.from_config(dict(config))
    except (TypeError, ValueError) as exc:
        raise _mismatch(f"{where} describes a model that cannot be built: {exc}") from exc
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _compare(expected: dict, stored: dict, where: Path, config: dict[str, Any] | None = None) -> None:
    for name, shape in expected.items():
        if name not in stored:
            raise _mismatch(f"tensor {name} is missing from {where}")
        if stored[name] != shape:
            msg = f"tensor {name} in {where} has shape {list(stored[name])}, the config expects {list(shape)}"
            if name == "patch_embed.proj.weight" and config is not None and stored[name][0] == shape[0]:
                msg += (f" (input channels: stored {stored[name][1]}, config in_channels {config['in_channels']} "
                        f"+ conditioning_channels {config.get('conditioning_channels', 0)} = {shape[1]})")
            raise _mismatch(msg)
    unexpected = sorted(set(stored) - set(expected))
    if unexpected:
        raise _mismatch(f"{where} holds tensors this model does not have: {', '.join(unexpected[:3])}"
                        + (" ..." if len(unexpected) > 3 else ""))


def _no_meta(model: torch.nn.Module, what: str) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise _mismatch(f"{what}: tensor {name} was not loaded (left on the meta device)")


def check_weights(folder: str | Path) -> dict[str, Any]:
    """Validate an MMVDM folder without loading tensor data; return the parsed configs (raises MVP4DError)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise _missing(f"MMVDM weights folder {folder} does not exist")
    info = _read_json(folder / "mmvdm.json") if (folder / "mmvdm.json").exists() else {}
    if info and (info.get("format") != FORMAT or int(info.get("format_version", 0)) > FORMAT_VERSION):
        raise _mismatch(f"{folder / 'mmvdm.json'} has format {info.get('format')!r} version "
                        f"{info.get('format_version')!r}; this backend reads {FORMAT!r} up to {FORMAT_VERSION}")
    for sub in ("transformer", "vae", "scheduler"):
        if not (folder / sub).is_dir():
            raise _missing(f"{folder} has no {sub}/ subfolder")
    t_cfg = _read_json(folder / "transformer" / "config.json")
    if t_cfg.get("_class_name") != MMVDMTransformer.__name__:
        raise _mismatch(f"{folder / 'transformer'} holds a {t_cfg.get('_class_name')!r}, not an MMVDMTransformer",
                        "Convert a CogVideoX-2B folder with build_mmvdm_from_cogvideox, or point to an MMVDM folder.")
    v_cfg = _read_json(folder / "vae" / "config.json")
    s_cfg = _read_json(folder / "scheduler" / "scheduler_config.json")
    if v_cfg.get("latent_channels") != t_cfg.get("in_channels"):
        raise _mismatch(f"vae latent_channels {v_cfg.get('latent_channels')} != transformer in_channels "
                        f"{t_cfg.get('in_channels')} in {folder}")
    t_files = _safetensors_files(folder / "transformer")
    v_files = _safetensors_files(folder / "vae")
    t_shapes, t_dtype = _stored_shapes(t_files)
    _compare(_expected_shapes(MMVDMTransformer, t_cfg, folder / "transformer"), t_shapes, folder / "transformer",
             t_cfg)
    v_shapes, v_dtype = _stored_shapes(v_files)
    _compare(_expected_shapes(AutoencoderKLCogVideoX, v_cfg, folder / "vae"), v_shapes, folder / "vae")
    return {"info": info, "transformer": t_cfg, "vae": v_cfg, "scheduler": s_cfg,
            "transformer_dtype": t_dtype, "vae_dtype": v_dtype}


# ---------------------------------------------------------------------------------------------- loading
def load_mmvdm(folder: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> MMVDMComponents:
    """Load transformer, VAE and scheduler config from an MMVDM folder (see :data:`LAYOUT`).

    ``dtype=None`` keeps each model's stored dtype; otherwise both are cast to ``dtype``. Raises
    ``MVP4DError`` (``WEIGHTS_MISSING`` / ``WEIGHTS_MISMATCH``) naming the file, field or tensor.
    """
    folder = Path(folder)
    checked = check_weights(folder)
    common = dict(use_safetensors=True, local_files_only=True)
    try:
        transformer = MMVDMTransformer.from_pretrained(
            str(folder), subfolder="transformer", torch_dtype=dtype or checked["transformer_dtype"], **common)
        vae = AutoencoderKLCogVideoX.from_pretrained(
            str(folder), subfolder="vae", torch_dtype=dtype or checked["vae_dtype"], **common)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise _mismatch(f"could not load the weights in {folder}: {exc}") from exc
    _no_meta(transformer, f"{folder / 'transformer'}")
    _no_meta(vae, f"{folder / 'vae'}")
    return MMVDMComponents(transformer.to(device).eval(), vae.to(device).eval(), dict(checked["scheduler"]),
                           checked["info"])


# ----------------------------------------------------------------------------------------------- saving
def save_mmvdm(folder: str | Path, transformer: MMVDMTransformer, vae_dir: str | Path | AutoencoderKLCogVideoX,
               scheduler_config: dict[str, Any], info: dict[str, Any] | None = None,
               max_shard_size: str | int = "10GB") -> Path:
    """Write an MMVDM folder atomically (build next to it, then rename over any old one).

    ``vae_dir`` is a diffusers VAE folder (its config and safetensors are copied) or a VAE model.
    """
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        transformer.save_pretrained(str(tmp / "transformer"), safe_serialization=True, max_shard_size=max_shard_size)
        if isinstance(vae_dir, AutoencoderKLCogVideoX):
            vae_dir.save_pretrained(str(tmp / "vae"), safe_serialization=True, max_shard_size=max_shard_size)
        else:
            vae_dir = Path(vae_dir)
            (tmp / "vae").mkdir()
            for f in [vae_dir / "config.json", *_safetensors_files(vae_dir, allow_variants=True)]:
                shutil.copy2(f, tmp / "vae" / f.name)
            for index in vae_dir.glob("*.safetensors.index.json"):
                shutil.copy2(index, tmp / "vae" / index.name)
        (tmp / "scheduler").mkdir()
        write_json_atomic(tmp / "scheduler" / "scheduler_config.json", scheduler_config)
        write_json_atomic(tmp / "mmvdm.json", {"format": FORMAT, "format_version": FORMAT_VERSION, **(info or {})})
    return folder


def mmvdm_state_from_cogvideox(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A CogVideoX transformer state dict -> the MMVDM's (``config``: the MMVDM config).

    Tensors are kept by name; ``patch_embed.proj.weight`` gains ``conditioning_channels`` zero input channels
    when it has exactly ``in_channels``; ``reference_temporal_embedding`` is set to the sin/cos encoding of t = 0.
    Shapes are not checked here (``_compare`` does that and names the tensor).
    """
    state = dict(state)
    w = state.get("patch_embed.proj.weight")
    cc = config.get("conditioning_channels", 0)
    if w is not None and w.ndim == 4 and w.shape[1] == config["in_channels"] and cc:
        state["patch_embed.proj.weight"] = torch.cat([w, w.new_zeros(w.shape[0], cc, *w.shape[2:])], dim=1)
    inner_dim = config["num_attention_heads"] * config["attention_head_dim"]
    dtype = w.dtype if w is not None else torch.float32
    state["reference_temporal_embedding"] = initial_reference_temporal(inner_dim).to(dtype)
    return state


def build_mmvdm_from_cogvideox(src_dir: str | Path, dst_dir: str | Path, conditioning_channels: int = 59,
                               dtype: torch.dtype = torch.bfloat16, *,
                               attention_scale_mode: str = DEFAULT_ATTENTION_SCALE_MODE,
                               max_shard_size: str | int = "10GB") -> Path:
    """Convert a local CogVideoX-2B diffusers folder into an MMVDM folder at ``dst_dir`` (atomic).

    Every CogVideoX transformer tensor is copied by name (cast to ``dtype``); ``patch_embed.proj.weight``
    gains ``conditioning_channels`` zero input channels; ``reference_temporal_embedding`` starts at the sin/cos
    encoding of t = 0. The VAE files and the scheduler config are copied unchanged.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise _missing(f"CogVideoX folder {src} does not exist", _COGVIDEOX_LAYOUT)
    for sub in ("transformer", "vae", "scheduler"):
        if not (src / sub).is_dir():
            raise _missing(f"{src} has no {sub}/ subfolder", _COGVIDEOX_LAYOUT)
    src_cfg = _read_json(src / "transformer" / "config.json", _COGVIDEOX_LAYOUT)
    if src_cfg.get("_class_name") not in (None, "CogVideoXTransformer3DModel"):
        raise _mismatch(f"{src / 'transformer'} holds a {src_cfg.get('_class_name')!r}, not a CogVideoX transformer")
    if src_cfg.get("patch_size_t") is not None or src_cfg.get("use_rotary_positional_embeddings"):
        raise _mismatch(f"{src / 'transformer'} is a CogVideoX 1.5/5B variant (3-D patches or RoPE); the MMVDM is "
                        "built from CogVideoX-2B")
    v_cfg = _read_json(src / "vae" / "config.json", _COGVIDEOX_LAYOUT)
    s_cfg = _read_json(src / "scheduler" / "scheduler_config.json", _COGVIDEOX_LAYOUT)
    if v_cfg.get("latent_channels") != src_cfg.get("in_channels", 16):
        raise _mismatch(f"vae latent_channels {v_cfg.get('latent_channels')} != transformer in_channels "
                        f"{src_cfg.get('in_channels', 16)} in {src}")
    v_shapes, _ = _stored_shapes(_safetensors_files(src / "vae", allow_variants=True))
    _compare(_expected_shapes(AutoencoderKLCogVideoX, v_cfg, src / "vae"), v_shapes, src / "vae")

    keys = set(mmvdm_2b_config())
    cfg = {k: v for k, v in src_cfg.items() if k in keys}
    cfg.update(conditioning_channels=conditioning_channels, attention_scale_mode=attention_scale_mode)
    with torch.device("meta"):
        model = MMVDMTransformer.from_config(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    state: dict[str, torch.Tensor] = {}
    for f in _safetensors_files(src / "transformer", allow_variants=True):
        try:
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():
                    state[name] = st.get_tensor(name).to(dtype)
        except (SafetensorError, OSError) as exc:
            raise _mismatch(f"{f} is not a readable safetensors file ({exc})") from exc
    state = mmvdm_state_from_cogvideox(state, cfg)
    _compare(expected, {k: tuple(v.shape) for k, v in state.items()}, src / "transformer", cfg)
    model.load_state_dict(state, strict=True, assign=True)
    _no_meta(model, "converted transformer")
    info = {"built_from": "CogVideoXTransformer3DModel", "source": src.name, "dtype": str(dtype).removeprefix("torch."),
            "conditioning_channels": conditioning_channels, "attention_scale_mode": attention_scale_mode,
            "parameters": sum(p.numel() for p in model.parameters())}
    return save_mmvdm(dst_dir, model, src / "vae", s_cfg, info, max_shard_size)


def init_random_mmvdm(dst_dir: str | Path, size: str = "tiny", seed: int = 0, conditioning_channels: int = 59,
                      dtype: torch.dtype = torch.float32) -> Path:
    """A complete MMVDM folder with randomly initialised weights (seeded): smoke tests, scaling checks and
    benchmarks of the whole path without CogVideoX. ``tiny``: the CPU-test sizes (``tiny_config``,
    ``tiny_vae_config``); ``2b``: the full-size transformer and CogVideoX's VAE architecture. The new
    conditioning input channels are zero like a fresh conversion (``from_config`` does that). Refuses an
    existing ``dst_dir`` (nothing is overwritten). The output is noise: ``mmvdm.json`` says so."""
    from .configs import tiny_vae_config
    from .schedule import SCHEDULER_CONFIG

    dst = Path(dst_dir)
    if dst.exists():
        raise MVP4DError("BAD_INPUT", f"{dst} already exists", "Choose a new folder for the weights.")
    if size not in ("tiny", "2b"):
        raise MVP4DError("BAD_INPUT", f"unknown model size {size!r}", "Use --size tiny or --size 2b.")
    torch.manual_seed(int(seed))
    if size == "tiny":
        model = MMVDMTransformer.from_config(tiny_config(conditioning_channels))
        vae = AutoencoderKLCogVideoX(**tiny_vae_config())
    else:
        model = MMVDMTransformer.from_config(mmvdm_2b_config(conditioning_channels))
        vae = AutoencoderKLCogVideoX()
    model, vae = torch.nn.Module.to(model, dtype), torch.nn.Module.to(vae, dtype)
    info = {"source": "random", "size": size, "seed": int(seed), "dtype": str(dtype).removeprefix("torch."),
            "note": "randomly initialised weights: the output is noise (tests and benchmarks only)"}
    return save_mmvdm(dst, model, vae, dict(SCHEDULER_CONFIG), info)
