"""The MMVDM diffusion transformer: diffusers' CogVideoX transformer, multi-view (paper §3.2, §5, S2.1).

``MMVDMTransformer`` subclasses ``CogVideoXTransformer3DModel`` and keeps all its parameter names, so the
CogVideoX-2B transformer weights load into it (see ``weights.build_mmvdm_from_cogvideox``). Changes:

* **No text.** The blocks get an empty (B, 0, D) text stream; ``patch_embed.text_proj`` stays (unused) so
  the CogVideoX state dict loads by name.
* **Token layout** ``[reference | view 1 frames | … | view V frames]``: each part is frame-major, then
  row-major over the (h/2, w/2) token grid, for ``(1 + V·T)·(h/2)·(w/2)`` tokens with T = 1 + F̃ latent
  frames per view (``num_tokens``). Without a reference latent the reference block is absent.
* **Conditioning** maps (``conditioning_channels`` per latent frame, 59 in the product; see
  ``backend.conditioning.maps``) are concatenated to the latent channels before the 2×2 patchify conv,
  whose input is widened from ``in_channels`` to ``in_channels + conditioning_channels``; a freshly
  built model (and the CogVideoX conversion) zero-initialises the new input channels, so at that point
  the conditioning does not change the output. ``config.in_channels`` stays the latent channel count.
* **Positions**: the stock 3-D sin/cos encoding per view (replicated across views); for the reference a
  learned temporal encoding ``reference_temporal_embedding`` (D/4) plus the sin/cos spatial encoding.
* **Attention** through ``MMVDMAttnProcessor`` (diffusers' dispatcher, so ``set_attention_backend`` works)
  with the §5 logit scale for this call's token count (``attention_scale_mode``, ``base_token_count``; see
  ``backend.mmvdm.attention``). The scale is a Python float, so a compiled block recompiles once per
  distinct token layout.
* Output: v-prediction (as CogVideoX-2B) for the view tokens only, (B, V, T, out_channels, h, w).

Regional compile: ``model.compile_repeated_blocks(...)`` compiles each ``CogVideoXBlock``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXTransformer3DModel
from diffusers.utils import apply_lora_scale
from torch import nn

from .attention import (ATTENTION_SCALE_MODES, BASE_TOKEN_COUNT, LEGACY_ATTENTION_SCALE_MODE, MMVDMAttnProcessor,
                        attention_logit_scale)
from .embeddings import initial_reference_temporal, reference_positional_embedding, video_positional_embedding

__all__ = ["MMVDMTransformer"]


class MMVDMTransformer(CogVideoXTransformer3DModel):
    """CogVideoX-2B transformer adapted to multi-view video with a reference image (see module docstring).

    Config: every ``CogVideoXTransformer3DModel`` argument with CogVideoX-2B's defaults, plus
    ``conditioning_channels`` (extra input channels per latent frame), ``attention_scale_mode``
    ("printed" | "entropy" | "none") and ``base_token_count`` (the paper's N_t = 13·32·32).
    """

    _repeated_blocks = ["CogVideoXBlock"]

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 30,
        attention_head_dim: int = 64,
        in_channels: int = 16,
        out_channels: int | None = 16,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        time_embed_dim: int = 512,
        ofs_embed_dim: int | None = None,
        text_embed_dim: int = 4096,
        num_layers: int = 30,
        dropout: float = 0.0,
        attention_bias: bool = True,
        sample_width: int = 90,
        sample_height: int = 60,
        sample_frames: int = 49,
        patch_size: int = 2,
        patch_size_t: int | None = None,
        temporal_compression_ratio: int = 4,
        max_text_seq_length: int = 226,
        activation_fn: str = "gelu-approximate",
        timestep_activation_fn: str = "silu",
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        spatial_interpolation_scale: float = 1.875,
        temporal_interpolation_scale: float = 1.0,
        use_rotary_positional_embeddings: bool = False,
        use_learned_positional_embeddings: bool = False,
        patch_bias: bool = True,
        conditioning_channels: int = 59,
        attention_scale_mode: str = LEGACY_ATTENTION_SCALE_MODE,  # a config without the key: its old meaning
        base_token_count: int = BASE_TOKEN_COUNT,
    ):
        if patch_size_t is not None:
            raise ValueError("MMVDMTransformer supports CogVideoX 1.0 patchify (patch_size_t=None) only")
        if use_rotary_positional_embeddings or use_learned_positional_embeddings:
            raise ValueError("MMVDMTransformer uses CogVideoX-2B's sin/cos positions (no RoPE, no learned table)")
        if attention_scale_mode not in ATTENTION_SCALE_MODES:
            raise ValueError(f"attention_scale_mode must be one of {ATTENTION_SCALE_MODES}, got {attention_scale_mode!r}")
        if conditioning_channels < 0:
            raise ValueError("conditioning_channels must be >= 0")
        inner_dim = num_attention_heads * attention_head_dim
        if inner_dim % 16:
            raise ValueError(f"heads × head dim = {inner_dim} must be divisible by 16 (3-D sin/cos split)")
        super().__init__(
            num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
            in_channels=in_channels, out_channels=out_channels, flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift, time_embed_dim=time_embed_dim, ofs_embed_dim=ofs_embed_dim,
            text_embed_dim=text_embed_dim, num_layers=num_layers, dropout=dropout, attention_bias=attention_bias,
            sample_width=sample_width, sample_height=sample_height, sample_frames=sample_frames,
            patch_size=patch_size, patch_size_t=patch_size_t, temporal_compression_ratio=temporal_compression_ratio,
            max_text_seq_length=max_text_seq_length, activation_fn=activation_fn,
            timestep_activation_fn=timestep_activation_fn, norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps, spatial_interpolation_scale=spatial_interpolation_scale,
            temporal_interpolation_scale=temporal_interpolation_scale,
            use_rotary_positional_embeddings=use_rotary_positional_embeddings,
            use_learned_positional_embeddings=use_learned_positional_embeddings, patch_bias=patch_bias,
        )
        # The stock joint (text + video) position table is never used here: drop the non-persistent buffer.
        if "pos_embedding" in self.patch_embed._buffers:
            del self.patch_embed._buffers["pos_embedding"]
        # Widen the patchify conv: the latent channels keep the stock (freshly initialised or loaded) weights,
        # the conditioning channels start at exactly zero. Explicit tensors, so it also holds under
        # diffusers' no_init_weights() and on the meta device.
        old = self.patch_embed.proj
        if conditioning_channels:
            proj = nn.Conv2d(in_channels + conditioning_channels, inner_dim, kernel_size=patch_size,
                             stride=patch_size, bias=patch_bias, device=old.weight.device, dtype=old.weight.dtype)
            with torch.no_grad():
                zeros = old.weight.new_zeros(inner_dim, conditioning_channels, patch_size, patch_size)
                proj.weight.copy_(torch.cat([old.weight, zeros], dim=1))
                if patch_bias:
                    proj.bias.copy_(old.bias)
            self.patch_embed.proj = proj
        # Learned temporal encoding of the reference latent, initialised to the sin/cos encoding of t = 0.
        self.reference_temporal_embedding = nn.Parameter(initial_reference_temporal(inner_dim))
        for block in self.transformer_blocks:
            block.attn1.set_processor(MMVDMAttnProcessor())

    # ----------------------------------------------------------------------------------------------- layout
    def num_tokens(self, views: int, frames: int, height: int, width: int, reference: bool = True) -> int:
        """Sequence length for ``views`` × ``frames`` latent frames of ``height`` × ``width`` latents."""
        p = self.config.patch_size
        return (int(reference) + views * frames) * (height // p) * (width // p)

    def attention_scale(self, num_tokens: int) -> float:
        """The §5 factor on 1/sqrt(d) for a sequence of ``num_tokens`` (config ``attention_scale_mode``)."""
        return attention_logit_scale(num_tokens, self.config.base_token_count, self.config.attention_scale_mode)

    # ------------------------------------------------------------------------------------------------- QKV
    def fuse_qkv_projections(self):
        """Fuse Q/K/V into one linear per layer; ``MMVDMAttnProcessor`` handles fused projections itself."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.fuse_projections(fuse=True)

    def unfuse_qkv_projections(self):
        for module in self.modules():
            if isinstance(module, Attention) and getattr(module, "fused_projections", False):
                module.fused_projections = False
                for name in ("to_qkv", "to_kv"):
                    if hasattr(module, name):
                        delattr(module, name)

    # --------------------------------------------------------------------------------------------- forward
    def _patchify(self, latents: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """(N, C, h, w) latents (+ (N, Cc, h, w) conditioning, None = zeros) -> (N, h/p · w/p, D) tokens.

        Always through ``patch_embed.proj``'s own forward, so offloading/casting hooks on it apply.
        """
        cc = self.config.conditioning_channels
        if cc:
            if cond is None:
                cond = latents.new_zeros(latents.shape[0], cc, *latents.shape[2:])
            latents = torch.cat([latents, cond], dim=1)
        return self.patch_embed.proj(latents).flatten(2).transpose(1, 2)

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: int | float | torch.Tensor,
        reference: torch.Tensor | None = None,
        conditioning: torch.Tensor | None = None,
        reference_conditioning: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> tuple[torch.Tensor] | Transformer2DModelOutput:
        """Predict v for every view's latent frames.

        Args:
            hidden_states: (B, V, T, C, h, w) noisy view latents (T = 1 + F̃ latent frames per view).
            timestep: (B,), or one timestep (scalar or (1,)) for the whole batch.
            reference: (B, C, h, w) clean reference latent, or None for no reference tokens at all (a
                pure video model; to *drop* the reference as in CFG/conditioning dropout pass zeros).
            conditioning: (B, V, T, Cc, h, w) maps per latent frame, or None (= zeros).
            reference_conditioning: (B, Cc, h, w), or None (= zeros).
            attention_kwargs: passed to every attention processor; ``attn_logit_scale`` overrides the
                §5 scale of this call (the key ``scale`` is LoRA's, as in diffusers).
        Returns:
            ``Transformer2DModelOutput(sample=(B, V, T, out_channels, h, w))`` (reference output dropped).
        """
        if hidden_states.ndim != 6:
            raise ValueError(f"hidden_states must be (B, V, T, C, h, w), got {tuple(hidden_states.shape)}")
        cfg = self.config
        batch, views, frames, channels, height, width = hidden_states.shape
        p, cc = cfg.patch_size, cfg.conditioning_channels
        if channels != cfg.in_channels or height % p or width % p:
            raise ValueError(f"hidden_states {tuple(hidden_states.shape)}: need C = {cfg.in_channels}, h and w "
                             f"divisible by {p}")
        if conditioning is not None and tuple(conditioning.shape) != (batch, views, frames, cc, height, width):
            raise ValueError(f"conditioning must be {(batch, views, frames, cc, height, width)}, "
                             f"got {tuple(conditioning.shape)}")
        if reference is not None and tuple(reference.shape) != (batch, channels, height, width):
            raise ValueError(f"reference must be {(batch, channels, height, width)}, got {tuple(reference.shape)}")
        if reference_conditioning is not None:
            if reference is None:
                raise ValueError("reference_conditioning given without a reference latent")
            if tuple(reference_conditioning.shape) != (batch, cc, height, width):
                raise ValueError(f"reference_conditioning must be {(batch, cc, height, width)}, "
                                 f"got {tuple(reference_conditioning.shape)}")
        dtype, device = self.patch_embed.proj.weight.dtype, hidden_states.device
        hp, wp = height // p, width // p

        # 1. time embedding (one per sample; every token, the clean reference included, shares it)
        timestep = torch.as_tensor(timestep, device=device)
        if timestep.numel() == 1:
            timestep = timestep.reshape(1).expand(batch)
        emb = self.time_embedding(self.time_proj(timestep).to(dtype=dtype), None)

        # 2. tokens: views (frame-major, row-major) + replicated sin/cos positions
        flat_cond = None if conditioning is None else conditioning.reshape(-1, cc, height, width).to(dtype)
        tokens = self._patchify(hidden_states.reshape(-1, channels, height, width).to(dtype), flat_cond)
        tokens = tokens.reshape(batch, views, frames * hp * wp, -1)
        pe = video_positional_embedding(tokens.shape[-1], frames, hp, wp, cfg.spatial_interpolation_scale,
                                        cfg.temporal_interpolation_scale, device=device)
        tokens = (tokens + pe.to(dtype)).reshape(batch, views * frames * hp * wp, -1)
        n_ref = 0
        if reference is not None:
            ref_cond = None if reference_conditioning is None else reference_conditioning.to(dtype)
            ref_tokens = self._patchify(reference.to(dtype), ref_cond)
            ref_pe = reference_positional_embedding(self.reference_temporal_embedding, tokens.shape[-1], hp, wp,
                                                    cfg.spatial_interpolation_scale, device=device)
            tokens = torch.cat([ref_tokens + ref_pe.to(dtype), tokens], dim=1)
            n_ref = hp * wp
        hidden = self.embedding_dropout(tokens)
        text = hidden.new_zeros(batch, 0, hidden.shape[-1])

        # 3. blocks, with this call's attention-logit scale
        attention_kwargs = dict(attention_kwargs or {})
        attention_kwargs.setdefault("attn_logit_scale", self.attention_scale(hidden.shape[1]))
        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden, text = self._gradient_checkpointing_func(block, hidden, text, emb, None, attention_kwargs)
            else:
                hidden, text = block(hidden_states=hidden, encoder_hidden_states=text, temb=emb,
                                     image_rotary_emb=None, attention_kwargs=attention_kwargs)

        # 4. output head on the view tokens, unpatchify to (B, V, T, C_out, h, w)
        hidden = self.norm_final(hidden[:, n_ref:])  # per-token ops: drop the reference first
        hidden = self.norm_out(hidden, temb=emb)
        hidden = self.proj_out(hidden)
        out = hidden.reshape(batch, views, frames, hp, wp, -1, p, p)
        out = out.permute(0, 1, 2, 5, 3, 6, 4, 7).reshape(batch, views, frames, -1, height, width)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)
