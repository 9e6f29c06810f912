"""GPU memory and time estimates of the generators: the one definition, torch-free.

The generators (:mod:`backend.generators.mmvdm`, :mod:`backend.generators.cap4d`) check these numbers
against the free GPU memory before loading anything; the Blender add-on imports this module (through
``mvp4d_blender.backend_link``, without torch) to show the same numbers before Generate. Only plain
arithmetic and the torch-free backend modules (the pass plan, the camera rings, the presets) are used here.

MMVDM, one sampling step (see :mod:`backend.mmvdm.configs` for the derivation):

    weights      = parameters × bytes(dtype)
    activations  = b · 12 · N · D · bytes(dtype), b = 2 for batched conventional CFG, else 1
    io           = V · T · h · w · (4 bytes · C · k + bytes(dtype) · Cc)

The generator's peak is the largest sampling step over its stages (the composed sampler runs per-view
videos and per-frame view sets separately; layer-by-layer offload keeps one layer resident) or the VAE
decode of one view plus the resident weights. CAP4D: weights + one CFG batch of 8-view groups, or the VAE
decode plus resident weights; its time is its FLOPs (⌈images / 7⌉ 8-view forwards per DDIM step, each
:data:`CAP4D_FORWARD_FLOPS_512` at 512², counted by :mod:`backend.cap4d.cost`) at an assumed GPU rate.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from .errors import MVP4DError
from .protocol import CAP4D_QUALITY, CAP4D_QUALITY_FOR_PRESET, PRESETS

__all__ = [
    "GiB", "DTYPE_BYTES", "CFG_MODES", "MMVDM_VRAM", "CAP4D_VRAM", "MMVDM_2B_SHAPE", "MMVDM_2B_PARAMETERS", "CAP4D_FORWARD_FLOPS_512",
    "ASSUMED_TFLOPS", "latent_frames", "latent_hw", "normalise_cfg_mode", "mmvdm_step_bytes", "mmvdm_stage_shapes",
    "mmvdm_memory", "cap4d_memory", "cap4d_flops", "ui_estimate",
]

GiB = 1024**3
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
CFG_MODES = ("none", "conventional", "multiview")
_CFG_ALIASES = {"off": "none", "no": "none", "standard": "conventional", "batched": "conventional",
                "multi-view": "multiview", "multi_view": "multiview", "per-view": "multiview", "per_view": "multiview"}

#: MMVDM memory presets (``generator.vram``): defaults for the memory-only switches; results do not change
MMVDM_VRAM: dict[str, dict[str, Any]] = {
    "high": dict(cfg_passes="batched", vae_tiling=False, offload="none"),  # >= 40 GB: fastest
    "medium": dict(cfg_passes="sequential", vae_tiling=False, offload="none"),  # ~24 GB (the default)
    "low": dict(cfg_passes="sequential", vae_tiling=True, offload="model"),  # ~12-16 GB
    "lowest": dict(cfg_passes="sequential", vae_tiling=True, offload="sequential"),  # slowest
}
#: CAP4D memory presets: groups per UNet call, VAE tiling, model offload (results do not change)
CAP4D_VRAM: dict[str, dict[str, Any]] = {
    "high": dict(groups_per_batch=4, cfg_batched=True, vae_tiling=False, offload="none"),
    "medium": dict(groups_per_batch=1, cfg_batched=True, vae_tiling=False, offload="none"),
    "low": dict(groups_per_batch=1, cfg_batched=False, vae_tiling=True, offload="none"),
    "lowest": dict(groups_per_batch=1, cfg_batched=False, vae_tiling=True, offload="model"),
}

#: the shape of the CogVideoX-2B-sized MMVDM (``backend.mmvdm.configs.mmvdm_2b_config`` builds on it)
MMVDM_2B_SHAPE: dict[str, int] = dict(num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16,
                                      time_embed_dim=512, num_layers=30, patch_size=2, temporal_compression_ratio=4,
                                      conditioning_channels=59)
#: parameters of the CogVideoX-2B-sized MMVDM (59 conditioning channels); tests recount it on the meta device
MMVDM_2B_PARAMETERS = 1_694_237_472
#: rough VAE decode peak of one 49-frame 512x512 view in half precision, untiled (CogVideoX's VAE)
MMVDM_VAE_DECODE_BYTES_512 = 13e9
MMVDM_VAE_TILED_FRACTION = 3.5 / 13.0

CAP4D_UNET_PARAMETERS = 815.55e6
CAP4D_VAE_PARAMETERS = 83.65e6
#: activation peak of one 512² image inside a UNet forward in half precision with a flash-class
#: kernel (linear in tokens); an estimate to be replaced by ``bench cap4d``'s measured peak
CAP4D_ACT_BYTES_512 = 0.35 * GiB
#: VAE decode peak of one 512² image in half precision, untiled / tiled
CAP4D_VAE_BYTES_512, CAP4D_VAE_TILED_BYTES_512 = 2.6 * GiB, 0.9 * GiB
#: FLOPs of one CFG-batched 8-view CAP4D UNet forward at 512² (``backend.cap4d.cost.forward_flops()``)
CAP4D_FORWARD_FLOPS_512 = 14_034_445_271_040
CAP4D_VIEWS = 8
#: assumed effective GPU rate for time estimates (40 % of an H100's bf16 dense rate; not measured)
ASSUMED_TFLOPS = 320.0


def latent_frames(frames: int, temporal_compression: int = 4) -> int:
    """Latent frames T = 1 + F̃ for F = 1 + 4·F̃ pixel frames (BAD_INPUT otherwise)."""
    if frames < 1 or (frames - 1) % temporal_compression:
        raise MVP4DError("BAD_INPUT", f"{frames} frames per view is not 1 + {temporal_compression}·k",
                         "Use 1 + 4·k frames per view (e.g. 1, 9, 49 or 89).")
    return 1 + (frames - 1) // temporal_compression


def latent_hw(res: int | tuple[int, int], patch: int) -> tuple[int, int]:
    height, width = (res, res) if isinstance(res, int) else res
    if height % (8 * patch) or width % (8 * patch):
        raise MVP4DError("BAD_INPUT", f"resolution {height}×{width} is not a multiple of {8 * patch}")
    return height // 8, width // 8


def normalise_cfg_mode(cfg_mode: str) -> str:
    mode = _CFG_ALIASES.get(str(cfg_mode).lower(), str(cfg_mode).lower())
    if mode not in CFG_MODES:
        raise MVP4DError("BAD_INPUT", f"unknown CFG mode {cfg_mode!r}", f"Use one of {', '.join(CFG_MODES)}.")
    return mode


def mmvdm_step_bytes(config: Mapping[str, Any], parameters: int, views: int, frames: int,
                     res: int | tuple[int, int], nbytes: int, cfg_mode: str = "multiview") -> dict[str, int]:
    """Bytes of one MMVDM sampling step: ``weights``, ``activations``, ``io``, ``total`` (+ ``tokens``)."""
    mode = normalise_cfg_mode(cfg_mode)
    t = latent_frames(frames, config.get("temporal_compression_ratio", 4))
    h, w = latent_hw(res, config["patch_size"])
    d_model = config["num_attention_heads"] * config["attention_head_dim"]
    n = (1 + views * t) * (h // config["patch_size"]) * (w // config["patch_size"])
    b = 2 if mode == "conventional" else 1
    k = 2 if mode == "none" else 4
    parts = {
        "weights": int(parameters) * nbytes,
        "activations": b * 12 * n * d_model * nbytes,
        "io": views * t * h * w * (4 * config["in_channels"] * k + nbytes * config.get("conditioning_channels", 0)),
    }
    parts["total"] = sum(parts.values())
    parts["tokens"] = n
    return parts


def mmvdm_stage_shapes(plan: Sequence[Any], num_views: int, res: int, *, sampler: str, window_frames: int,
                       preview_factor: int, refine_strength: float) -> list[tuple[int, int, int]]:
    """(views per forward, window frames, resolution) of the largest forward of each sampling stage."""
    full = (max(len(p.all_views) for p in plan), max(p.num_window_frames for p in plan), res)
    if sampler != "preview":
        return [full]
    shapes = [(num_views, min(window_frames, max(p.frames[1] for p in plan)), res // preview_factor)]
    return shapes + [full] if refine_strength > 0 else shapes


def mmvdm_memory(config: Mapping[str, Any], parameters: int, shapes: Sequence[tuple[int, int, int]], *,
                 nbytes: int, sampler: str, guidance: str, cfg_passes: str, offload: str,
                 vae_tiling: bool) -> dict[str, int]:
    """Bytes: ``transformer`` (largest sampling step), ``vae`` (decode of one view), ``peak``, ``weights``."""
    cfg_mode = "conventional" if guidance == "multiview" and cfg_passes == "batched" else guidance
    trans = 0
    for views, frames, res in shapes:
        if sampler == "composed":  # per-view videos and per-frame multi-view sets
            e = max(mmvdm_step_bytes(config, parameters, 1, frames, res, nbytes, cfg_mode)["total"],
                    mmvdm_step_bytes(config, parameters, views, 1, res, nbytes, cfg_mode)["total"])
        else:
            e = mmvdm_step_bytes(config, parameters, views, frames, res, nbytes, cfg_mode)["total"]
        trans = max(trans, e)
    weights = int(parameters) * nbytes
    if offload == "sequential":
        layers = max(1, int(config.get("num_layers", 1)))
        trans = trans - weights + weights // layers
    frames, res = max(((f, r) for _v, f, r in shapes), key=lambda fr: fr[0] * fr[1] ** 2)  # decoded per view
    vae = MMVDM_VAE_DECODE_BYTES_512 * (res / 512) ** 2 * (frames / 49) * (2 if nbytes == 4 else 1)
    if vae_tiling:
        vae *= MMVDM_VAE_TILED_FRACTION
    vae = int(vae)  # decoded one view at a time, so slicing does not change the decode peak here
    resident = 0 if offload != "none" else weights
    return {"transformer": int(trans), "vae": vae, "peak": int(max(trans, vae + resident)), "weights": weights}


def cap4d_memory(quality: str, *, nbytes: int, groups_per_batch: int, cfg_batched: bool, vae_tiling: bool,
                 offload: str) -> dict[str, int]:
    """Bytes: ``unet`` (weights + one CFG batch of 8-view groups), ``vae`` (decode), ``peak``, ``weights``."""
    res = CAP4D_QUALITY[quality][2]
    scale = (res / 512) ** 2 * (nbytes / 2)
    weights = int(CAP4D_UNET_PARAMETERS * nbytes)
    act = int((2 if cfg_batched else 1) * CAP4D_VIEWS * groups_per_batch * CAP4D_ACT_BYTES_512 * scale)
    vae = int((CAP4D_VAE_TILED_BYTES_512 if vae_tiling else CAP4D_VAE_BYTES_512) * scale + CAP4D_VAE_PARAMETERS * nbytes)
    resident = 0 if offload == "model" else weights
    return {"unet": weights + act, "vae": vae, "peak": max(weights + act, vae + resident), "weights": weights}


def cap4d_flops(quality: str, references: int = 1, max_refs: int = 4) -> dict[str, Any]:
    """Forwards (⌈images / (8 − R)⌉ groups × DDIM steps) of a CAP4D quality preset; FLOPs at 512²."""
    images, steps, res = CAP4D_QUALITY[quality]
    r = min(references, max_refs)
    groups = math.ceil(images / (CAP4D_VIEWS - r))
    return {"images": images, "steps": steps, "resolution": res, "references": r, "groups_per_step": groups,
            "forwards": groups * steps, "flops": groups * steps * CAP4D_FORWARD_FLOPS_512 * (res / 512) ** 2}


def ui_estimate(generator: str, preset: str, vram: str) -> dict[str, Any]:
    """What the add-on shows before Generate for a camera preset and ``generator.vram`` mode, with the
    generator's default settings in bf16 on a GPU: ``peak_gib`` (None for the light projection generator)
    and ``minutes`` (sampling time on an H100-class GPU; None where not estimated)."""
    vram = vram.lower()
    if generator == "cap4d":
        quality = CAP4D_QUALITY_FOR_PRESET.get(preset, "low")
        est = cap4d_memory(quality, nbytes=2, **CAP4D_VRAM[vram])
        minutes = cap4d_flops(quality)["flops"] / (ASSUMED_TFLOPS * 1e12) / 60.0
        return {"peak_gib": est["peak"] / GiB, "minutes": minutes if CAP4D_QUALITY[quality][2] >= 512 else None}
    if generator != "mmvdm":
        return {"peak_gib": None, "minutes": None}
    from .cameras.rings import ring_preset
    from .mmvdm.plan import CONTEXT_FRAMES, WINDOW_FRAMES, build_plan

    p = PRESETS[preset]
    ring = ring_preset(preset)
    plan = build_plan(ring, p.num_frames, window_frames=WINDOW_FRAMES, context_frames=CONTEXT_FRAMES)
    shapes = mmvdm_stage_shapes(plan, len(ring), p.resolution, sampler="joint", window_frames=WINDOW_FRAMES,
                                preview_factor=2, refine_strength=0.6)
    est = mmvdm_memory(MMVDM_2B_SHAPE, MMVDM_2B_PARAMETERS, shapes, nbytes=2, sampler="joint",
                       guidance="multiview", **MMVDM_VRAM[vram])
    return {"peak_gib": est["peak"] / GiB, "minutes": None}
