"""Attention for the MMVDM: the §5 logit scale and a processor that goes through diffusers' dispatcher.

Attention-logit scale (paper §5 "Attention biasing")
-----------------------------------------------------
The paper cites Jin et al. 2023 (attention entropy grows with log N) and prints the logit scale as

    scale = sqrt(1/d) * sqrt(log N_t / log N_i)

with d the head dimension, N_t = 13·32·32 = 13,312 the paper's training token count of CogVideoX
(13 latent frames of 32×32 tokens; config ``base_token_count``) and N_i the token count of *this* call
(the paper sets N_i "to the token count for each individual batch", in training and in sampling).

``attention_logit_scale(n, base, mode)`` returns the factor that multiplies the usual 1/sqrt(d):

* ``"printed"``: sqrt(log N_t / log N_i), the formula exactly as printed. For N_i > N_t it is
  below 1, i.e. it *softens* attention as the sequence grows (0.905 at 8 views × 13 latents × 32²).
* ``"entropy"`` (the default for new weights): sqrt(log N_i / log N_t), the direction the cited entropy argument implies (Jin et al.
  scale by sqrt(log_{N_t} N_i / d) to keep the attention entropy constant: *sharpen* attention as the
  sequence grows; 1.105 at the same size).
* ``"none"``: 1, plain 1/sqrt(d) (stock CogVideoX).

Both interpretations are kept because the printed equation and the argument it cites disagree in
direction; the MMVDM weights must be used with the mode they were fine-tuned with (config
``attention_scale_mode``). Measured (:mod:`.attention_entropy`, docs/architecture.md): from 13·32·32 to the
8-view 107,520 tokens "entropy" holds the attention entropy (relative to log N) within ~1 % while "printed"
moves it by 5–25 % once the logits are sharper than noise, so new weights default to
:data:`DEFAULT_ATTENTION_SCALE_MODE` = "entropy"; a weights config without the key predates that choice and
keeps its old meaning, :data:`LEGACY_ATTENTION_SCALE_MODE` = "printed" (the transformer's ``__init__``
default, which is what diffusers fills in for a missing config key).
"""

from __future__ import annotations

import math

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb

__all__ = ["ATTENTION_SCALE_MODES", "BASE_TOKEN_COUNT", "DEFAULT_ATTENTION_SCALE_MODE", "LEGACY_ATTENTION_SCALE_MODE",
           "attention_logit_scale", "MMVDMAttnProcessor"]

#: the paper's N_t, "the default configuration of the CogVideoX model": 13 latent frames × 32 × 32 tokens
BASE_TOKEN_COUNT = 13 * 32 * 32
ATTENTION_SCALE_MODES = ("printed", "entropy", "none")
#: the mode new weights are built with (measured to keep attention entropy constant; module docstring)
DEFAULT_ATTENTION_SCALE_MODE = "entropy"
#: the meaning of a weights config that has no ``attention_scale_mode`` (written before the choice above)
LEGACY_ATTENTION_SCALE_MODE = "printed"


def attention_logit_scale(num_tokens: int, base_token_count: int = BASE_TOKEN_COUNT,
                          mode: str = DEFAULT_ATTENTION_SCALE_MODE) -> float:
    """Factor multiplying 1/sqrt(d) for a sequence of ``num_tokens`` tokens (see the module docstring)."""
    if mode not in ATTENTION_SCALE_MODES:
        raise ValueError(f"attention_scale_mode must be one of {ATTENTION_SCALE_MODES}, got {mode!r}")
    if mode == "none" or num_tokens == base_token_count:
        return 1.0
    if num_tokens < 2 or base_token_count < 2:
        raise ValueError(f"the attention scale needs at least 2 tokens (got {num_tokens}, base {base_token_count})")
    ratio = math.log(base_token_count) / math.log(num_tokens)  # log N_t / log N_i
    return math.sqrt(ratio) if mode == "printed" else math.sqrt(1.0 / ratio)


class MMVDMAttnProcessor:
    """CogVideoX self-attention (QKV with bias, qk LayerNorm, optional RoPE) through ``dispatch_attention_fn``.

    Differences from diffusers' ``CogVideoXAttnProcessor2_0``: the per-call ``attn_logit_scale`` (a factor on
    ``attn.scale`` = 1/sqrt(d); ``None`` or 1 leaves the backend's default 1/sqrt(d) untouched), and the kernel
    is chosen by diffusers' attention backend setting (``model.set_attention_backend("flash" | "_flash_3" |
    "_native_cudnn" | "sage" | ...)`` or the ``attention_backend(...)`` context manager), which only reaches
    processors that carry ``_attention_backend``. The MMVDM has no text: ``encoder_hidden_states`` is an
    empty (B, 0, D) tensor from the CogVideoX block; a non-empty one is still handled like stock
    ([text ; video], RoPE on the video part only). Fused QKV (``attn.fuse_projections()``) is supported.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_logit_scale: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is not None:
            raise NotImplementedError("MMVDMAttnProcessor attends over all tokens; attention masks are not supported")
        text_len = 0 if encoder_hidden_states is None else encoder_hidden_states.size(1)
        if text_len:
            hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)

        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)

        heads = attn.heads
        head_dim = key.shape[-1] // heads
        # dispatcher layout: (B, N, heads, head_dim)
        query = query.unflatten(-1, (heads, head_dim))
        key = key.unflatten(-1, (heads, head_dim))
        value = value.unflatten(-1, (heads, head_dim))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query = torch.cat(
                [query[:, :text_len], apply_rotary_emb(query[:, text_len:], image_rotary_emb, sequence_dim=1)], dim=1
            )
            if not attn.is_cross_attention:
                key = torch.cat(
                    [key[:, :text_len], apply_rotary_emb(key[:, text_len:], image_rotary_emb, sequence_dim=1)], dim=1
                )

        scale = None if attn_logit_scale is None or attn_logit_scale == 1.0 else attn.scale * float(attn_logit_scale)
        out = dispatch_attention_fn(
            query, key, value, scale=scale, backend=self._attention_backend, parallel_config=self._parallel_config
        )
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        encoder_out, out = out.split([text_len, out.size(1) - text_len], dim=1)
        return out, encoder_out
