"""MMVDM configurations and their cost model: parameter count, FLOPs per forward, memory per sampling step.

FLOPs of one transformer forward (``forward_flops``; 2·m·n·k per (m×k)·(k×n) matmul, elementwise ops,
norms, softmax and GELU not counted), with N tokens in the sequence (reference included), N_v of them
view tokens, D = heads × head dim, E = ``time_embed_dim``, L layers, Cin = in + conditioning channels,
p = patch size, per batch element:

    patch embed     2 · N · (Cin · p²) · D                 (the 2×2 conv as a matmul)
    time embedding  2 · (D · E + E · E)
    per layer       8 · N · D²      Q, K, V and output projections
                  + 4 · N² · D      Q·Kᵀ and attention·V (2 · N² · d per head, summed over heads)
                  + 16 · N · D²     feed-forward D → 4D → D
                  + 2 · 2 · E · 6D  the two AdaLN-zero modulation linears
    output head     2 · E · 2D + 2 · N_v · D · (p² · C_out)

Memory of one sampling step (``memory_breakdown``; no gradients, flash-class attention, i.e. memory
linear in N; a math-attention fallback would add heads · N² elements per layer):

    weights      = parameters × bytes(dtype)
    activations  = b · 12 · N · D · bytes(dtype), b = 2 for batched conventional CFG, else 1.
                   12 covers the peak inside a block's feed-forward: residual stream (1) + normed input (1)
                   + the [text ; video] concatenated copy (1) + FF hidden (4) + GELU output (4) + FF output (1).
    io           = V · T · h · w · (4 bytes · C · k + bytes(dtype) · Cc), the fp32 latent state, model output
                   and (CFG) unconditional output and guided output (k = 2 without CFG, 4 with), plus the
                   conditioning maps at latent resolution (h = H/8, w = W/8).

``estimate_memory`` returns weights + activations + io in bytes. Multi-view CFG runs its per-view
unconditional passes one after another (each a 1-view sequence), so its activation peak is the full
conditional pass; conventional CFG is counted as one batched [cond, uncond] pass. Not included: the VAE
(see the reference note: ~13 GB untiled / ~3.5 GB tiled decode at 512², run after sampling) and the
CUDA context / allocator slack (typically 0.5–1.5 GB).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Mapping

import torch

from ..estimates import CFG_MODES, MMVDM_2B_SHAPE, latent_frames, mmvdm_step_bytes
from .attention import BASE_TOKEN_COUNT, DEFAULT_ATTENTION_SCALE_MODE

__all__ = [
    "CFG_MODES", "mmvdm_2b_config", "tiny_config", "tiny_vae_config", "count_parameters", "latent_frames",
    "forward_flops", "memory_breakdown", "estimate_memory",
]


def mmvdm_2b_config(conditioning_channels: int = 59,
                     attention_scale_mode: str = DEFAULT_ATTENTION_SCALE_MODE) -> dict[str, Any]:
    """The MMVDM built on CogVideoX-2B (its Hub transformer config; 30 layers, 30 heads × 64, D = 1920)."""
    return dict(
        MMVDM_2B_SHAPE, flip_sin_to_cos=True, freq_shift=0, ofs_embed_dim=None, text_embed_dim=4096, dropout=0.0,
        attention_bias=True, sample_width=90, sample_height=60, sample_frames=49, patch_size_t=None,
        max_text_seq_length=226, activation_fn="gelu-approximate",
        timestep_activation_fn="silu", norm_elementwise_affine=True, norm_eps=1e-5,
        spatial_interpolation_scale=1.875, temporal_interpolation_scale=1.0,
        use_rotary_positional_embeddings=False, use_learned_positional_embeddings=False, patch_bias=True,
        conditioning_channels=conditioning_channels, attention_scale_mode=attention_scale_mode,
        base_token_count=BASE_TOKEN_COUNT,
    )


def tiny_config(conditioning_channels: int = 59, **overrides: Any) -> dict[str, Any]:
    """A CPU-test-sized MMVDM: 2 layers, 2 heads × 8 (D = 16), 4 latent channels, 8×8 latent samples."""
    cfg = mmvdm_2b_config(conditioning_channels)
    cfg.update(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=16,
               text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=9,
               max_text_seq_length=0)
    cfg.update(overrides)
    return cfg


def tiny_vae_config(latent_channels: int = 4) -> dict[str, Any]:
    """A CPU-test-sized ``AutoencoderKLCogVideoX`` (8× spatial, 4× temporal compression like the real one)."""
    return dict(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 8, 8, 8),
        down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
        layers_per_block=1, norm_num_groups=4, temporal_compression_ratio=4, sample_height=32, sample_width=32,
    )


def _config_dict(config: Any) -> dict[str, Any]:
    if hasattr(config, "config") and not isinstance(config, Mapping):  # a model
        config = config.config
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def count_parameters(config: Any) -> int:
    """Exact parameter count (instantiated on the meta device: no memory; cached per config because the
    full-size model takes seconds to build and the memory check asks once per candidate setting)."""
    return _count_parameters(json.dumps(_config_dict(config), sort_keys=True, default=str))


@lru_cache(maxsize=16)
def _count_parameters(config_json: str) -> int:
    from .transformer import MMVDMTransformer

    with torch.device("meta"):
        model = MMVDMTransformer.from_config(json.loads(config_json))
    return sum(p.numel() for p in model.parameters())


def forward_flops(config: Any, views: int, frames: int, height: int, width: int, *,
                  reference: bool = True, batch: int = 1) -> dict[str, int]:
    """FLOPs of one forward for V views × ``frames`` latent frames of ``height`` × ``width`` latents.

    Returns the components (``patch_embed``, ``time_embed``, ``linear``, ``attention``, ``adaln``,
    ``output``), ``total`` and ``tokens``; see the module docstring for the formula.
    """
    c = _config_dict(config)
    p, d_model, e = c["patch_size"], c["num_attention_heads"] * c["attention_head_dim"], c["time_embed_dim"]
    layers, c_in = c["num_layers"], c["in_channels"] + c.get("conditioning_channels", 0)
    c_out = c["out_channels"] or c["in_channels"]
    per_frame = (height // p) * (width // p)
    n_view = views * frames * per_frame
    n = n_view + (per_frame if reference else 0)
    parts = {
        "patch_embed": 2 * n * c_in * p * p * d_model,
        "time_embed": 2 * (d_model * e + e * e),
        "linear": layers * 24 * n * d_model * d_model,
        "attention": layers * 4 * n * n * d_model,
        "adaln": layers * 2 * 2 * e * 6 * d_model,
        "output": 2 * e * 2 * d_model + 2 * n_view * d_model * p * p * c_out,
    }
    out = {k: v * batch for k, v in parts.items()}
    out["total"] = sum(out.values())
    out["tokens"] = n
    return out


def memory_breakdown(config: Any, views: int, frames: int, res: int | tuple[int, int],
                     dtype: torch.dtype = torch.bfloat16, cfg_mode: str = "multiview") -> dict[str, int]:
    """Bytes of one sampling step: ``weights``, ``activations``, ``io``, ``total`` (+ ``tokens``).

    ``frames`` are pixel frames per view (1 + 4k), ``res`` pixels (int or (H, W)); the formula is
    :func:`backend.estimates.mmvdm_step_bytes` with this config's exact parameter count.
    """
    c = _config_dict(config)
    nbytes = torch.empty((), dtype=dtype).element_size()
    return mmvdm_step_bytes(c, count_parameters(c), views, frames, res, nbytes, cfg_mode)


def estimate_memory(config: Any, views: int, frames: int, res: int | tuple[int, int],
                    dtype: torch.dtype = torch.bfloat16, cfg_mode: str = "multiview") -> int:
    """Bytes for the transformer weights + activations of one sampling step (see the module docstring)."""
    return memory_breakdown(config, views, frames, res, dtype, cfg_mode)["total"]
