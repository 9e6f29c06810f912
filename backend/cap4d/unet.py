"""CAP4D's MMDM UNet on diffusers' ``UNet2DConditionModel`` (SD-2.1 layout without text cross-attention).

Differences from a stock Stable Diffusion UNet, all from the CAP4D paper/code:

* no cross-attention: every transformer block's ``attn2``/``norm2`` is removed (the module keeps
  ``cross_attention_dim`` only so that diffusers builds the blocks; the weights have no ``attn2``);
* ``cond_linear`` (``Linear(condition_channels -> block_out_channels[0])``) maps the per-pixel
  conditioning maps, and its output is **added to the output of** ``conv_in`` (LDM's first input block),
  so the first skip connection carries it too;
* self-attention over all views of a batch item at the levels in ``joint_view_levels`` (and the middle
  block when ``joint_view_mid``), per image elsewhere (:class:`~backend.cap4d.attention.ViewAttnProcessor`);
* reference views: their input latent is the clean ``z_input`` and their output is replaced by
  ``x - z_input`` (the noise that would turn ``z_input`` into ``x``), so a sampler can treat all views alike.
"""

from __future__ import annotations

import inspect

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import FrozenDict, register_to_config
from torch import nn

from .attention import ViewAttnProcessor

__all__ = ["MMDMUNet"]


class MMDMUNet(UNet2DConditionModel):
    """The MMDM denoiser. ``forward(x, timesteps, z_input, ref_mask, pos_enc)`` on (B, V, ...) tensors."""

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 4,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        attention_head_dim: tuple[int, ...] = (5, 10, 20, 20),
        cross_attention_dim: int = 1024,
        use_linear_projection: bool = True,
        transformer_layers_per_block: int = 1,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        norm_num_groups: int = 32,
        condition_channels: int = 50,
        num_views: int = 8,
        joint_view_levels: tuple[int, ...] = (1, 2),
        joint_view_mid: bool = True,
    ):
        super().__init__(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            down_block_types=tuple(down_block_types), up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            attention_head_dim=tuple(attention_head_dim) if not isinstance(attention_head_dim, int) else attention_head_dim,
            cross_attention_dim=cross_attention_dim, use_linear_projection=use_linear_projection,
            transformer_layers_per_block=transformer_layers_per_block, flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift, norm_num_groups=norm_num_groups,
        )
        for blk in self.modules():
            if hasattr(blk, "attn2") and hasattr(blk, "norm2") and hasattr(blk, "attn1"):
                blk.attn2 = None
                blk.norm2 = None
        self.cond_linear = nn.Linear(condition_channels, block_out_channels[0])
        self.set_view_attention()
        # the parent registered all of its own defaults too; keep our signature's keys so that a saved
        # config.json loads back without "unexpected attribute" warnings
        own = set(inspect.signature(MMDMUNet.__init__).parameters) - {"self"}
        self._internal_dict = FrozenDict({k: v for k, v in self._internal_dict.items() if k in own or k.startswith("_")})

    # ------------------------------------------------------------------------------------ attention
    def joint_view_module_prefixes(self) -> list[str]:
        """Module-name prefixes whose self-attention runs over all views (e.g. ``down_blocks.1``)."""
        n = len(self.config.block_out_channels)
        levels = set(self.config.joint_view_levels)
        out = [f"down_blocks.{i}." for i in sorted(levels)]
        out += [f"up_blocks.{n - 1 - i}." for i in sorted(levels)]
        if self.config.joint_view_mid:
            out.append("mid_block.")
        return out

    def set_view_attention(self) -> None:
        """Install :class:`ViewAttnProcessor` on every ``attn1`` (joint or per image by level).

        Re-run after ``set_attn_processor``/``set_default_attn_processor``, which would replace it. The
        attention backend chosen with ``set_attention_backend`` is kept.
        """
        prefixes = self.joint_view_module_prefixes()
        procs = {}
        for name in self.attn_processors:
            procs[name] = ViewAttnProcessor(joint=any(name.startswith(p) for p in prefixes))
        self.set_attn_processor(procs)

    # -------------------------------------------------------------------------------------- forward
    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        z_input: torch.Tensor,
        ref_mask: torch.Tensor,
        pos_enc: torch.Tensor,
    ) -> torch.Tensor:
        """Noise estimate for every view.

        ``x``, ``z_input``: (B, V, C, h, w) noisy and clean latents; ``timesteps``: (B, V) integers;
        ``ref_mask``: (B, V, 1, 1, 1) (1 for references); ``pos_enc``: (B, V, h, w, condition_channels).
        Returns (B, V, C, h, w) in the dtype of ``x``.
        """
        b, v = x.shape[:2]
        ref = ref_mask.to(torch.bool)
        x_minus_z = x - z_input
        sample = torch.where(ref, z_input, x).flatten(0, 1).to(self.dtype)
        t = timesteps.reshape(b * v)
        kwargs = {"num_views": v}

        emb = self.time_embedding(self.get_time_embed(sample, t))
        sample = self.conv_in(sample)
        sample = sample + self.cond_linear(pos_enc.flatten(0, 1).to(self.dtype)).permute(0, 3, 1, 2)

        skips: tuple[torch.Tensor, ...] = (sample,)
        for blk in self.down_blocks:
            if getattr(blk, "has_cross_attention", False):
                sample, res = blk(sample, temb=emb, cross_attention_kwargs=kwargs)
            else:
                sample, res = blk(sample, temb=emb)
            skips += res

        sample = self.mid_block(sample, emb, cross_attention_kwargs=kwargs)

        for i, blk in enumerate(self.up_blocks):
            res, skips = skips[-len(blk.resnets):], skips[: -len(blk.resnets)]
            size = skips[-1].shape[2:] if i < len(self.up_blocks) - 1 else None
            if getattr(blk, "has_cross_attention", False):
                sample = blk(sample, res, temb=emb, cross_attention_kwargs=kwargs, upsample_size=size)
            else:
                sample = blk(sample, res, temb=emb, upsample_size=size)

        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        out = sample.to(x.dtype).unflatten(0, (b, v))
        return torch.where(ref, x_minus_z, out)
