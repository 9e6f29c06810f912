"""CAP4D MMDM configurations: upstream's constructor vocabulary -> our diffusers UNet config.

CAP4D's network is written in LDM's ``UNetModel`` vocabulary (``model_channels``, ``channel_mult``,
``attention_resolutions``, ``num_head_channels`` ...). Checkpoints and golden fixtures carry that
vocabulary, so :func:`unet_config_from_upstream` is the one place that translates it into the keyword
arguments of :class:`backend.cap4d.unet.MMDMUNet` (a diffusers ``UNet2DConditionModel``).

Rules taken from the upstream network (read, not copied):

* a level ``i`` (down and up) has a spatial transformer iff its downsampling factor ``2**i`` is in
  ``attention_resolutions``; the middle block always has one;
* a transformer attends jointly over the V views of a batch item iff the channel multiplier of its level
  is >= 2 (``temporal_mode="3d"``); the middle block uses the last multiplier. For SD-2.1's (1, 2, 4, 4)
  this means: 64² per view, 32²/16²/middle joint;
* heads per level = channels // ``num_head_channels`` (or ``num_heads`` when given); diffusers calls that
  list ``attention_head_dim`` (a known naming quirk);
* each transformer has exactly one block with linear projections, whatever ``transformer_depth`` says
  (upstream's transformer ignores it), no cross-attention (``attn2``/``norm2`` are removed);
* the timestep embedding is LDM's ``[cos, sin]`` order: ``flip_sin_to_cos=True, freq_shift=0``.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import MVP4DError

__all__ = [
    "SCALE_FACTOR", "LATENT_DOWNSAMPLE", "CONDITION_CHANNELS", "NUM_VIEWS", "sd21_upstream_config",
    "tiny_upstream_config", "unet_config_from_upstream",
]

#: latents = VAE posterior sample × this (Stable Diffusion's scale factor)
SCALE_FACTOR = 0.18215
#: image pixels per latent pixel
LATENT_DOWNSAMPLE = 8
#: conditioning channels per latent pixel (see backend.cap4d.maps)
CONDITION_CHANNELS = 50
#: frames per forward of the public model (references + generated)
NUM_VIEWS = 8


def sd21_upstream_config() -> dict[str, Any]:
    """The public checkpoint's UNet in upstream vocabulary (SD-2.1 layout, 815.55 M parameters)."""
    return dict(image_size=64, time_steps=NUM_VIEWS, temporal_mode="3d", in_channels=4, out_channels=4,
                model_channels=320, condition_channels=CONDITION_CHANNELS, attention_resolutions=[4, 2, 1],
                num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_head_channels=64, use_spatial_transformer=True,
                use_linear_in_transformer=True, transformer_depth=1, context_dim=1024)


def tiny_upstream_config() -> dict[str, Any]:
    """The same network at toy size (32 base channels) for CPU tests."""
    return dict(sd21_upstream_config(), model_channels=32, num_head_channels=16, image_size=16)


def _bad(msg: str) -> MVP4DError:
    return MVP4DError("WEIGHTS_MISMATCH", f"CAP4D UNet config: {msg}",
                      "Use a CAP4D MMDM checkpoint or a fixture written in its configuration vocabulary.")


def unet_config_from_upstream(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Upstream ``MMDMUnetModel`` parameters -> ``MMDMUNet.from_config`` keyword arguments."""
    try:
        mc = int(cfg["model_channels"])
        mults = [int(m) for m in cfg["channel_mult"]]
        nres = int(cfg["num_res_blocks"])
        att_res = {int(r) for r in cfg["attention_resolutions"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(f"missing or malformed field ({exc})") from exc
    if cfg.get("temporal_mode", "3d") != "3d":
        raise _bad(f"temporal_mode {cfg.get('temporal_mode')!r} is not supported (the public model uses '3d')")
    if not cfg.get("use_spatial_transformer", True) or not cfg.get("use_linear_in_transformer", True):
        raise _bad("only spatial transformers with linear projections exist in CAP4D's network")
    head_ch = int(cfg.get("num_head_channels", -1))
    num_heads = int(cfg.get("num_heads", -1))
    if head_ch <= 0 and num_heads <= 0:
        raise _bad("either num_head_channels or num_heads must be set")
    channels = [mc * m for m in mults]

    def heads(ch: int) -> int:
        return ch // head_ch if head_ch > 0 else num_heads

    has_attn = [(2 ** i) in att_res for i in range(len(mults))]
    joint = [m >= 2 for m in mults]
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)]
    return dict(
        sample_size=int(cfg.get("image_size", 64)),
        in_channels=int(cfg.get("in_channels", 4)),
        out_channels=int(cfg.get("out_channels", 4)),
        down_block_types=down,
        up_block_types=up,
        block_out_channels=channels,
        layers_per_block=nres,
        attention_head_dim=[heads(c) for c in channels],
        cross_attention_dim=int(cfg.get("context_dim") or 1024),  # builds attn2, which MMDMUNet then removes
        use_linear_projection=True,
        transformer_layers_per_block=1,
        flip_sin_to_cos=True,
        freq_shift=0,
        norm_num_groups=32,
        condition_channels=int(cfg.get("condition_channels", CONDITION_CHANNELS)),
        num_views=int(cfg.get("time_steps", NUM_VIEWS)),
        joint_view_levels=[i for i, j in enumerate(joint) if j and has_attn[i]],
        joint_view_mid=bool(mults[-1] >= 2),
    )
