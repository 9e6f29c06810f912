"""Self-attention over the views of a batch item, through diffusers' attention dispatcher.

CAP4D's MMDM folds the V views of one batch item into the UNet's batch axis (B·V images). At the coarser
levels its self-attention runs over the tokens of all V views together ("3d" mode), at the finest level
over each image alone. :class:`ViewAttnProcessor` does both for a diffusers ``Attention`` module: with
``joint=True`` the (B·V, N, C) tokens are regrouped as (B, V·N, C) before attention and back after (the
order of tokens inside a sequence does not matter for unmasked attention).

The kernel is whatever diffusers' dispatcher is set to (``unet.set_attention_backend("flash" |
"_native_cudnn" | "sage" | ...)`` or the ``attention_backend(...)`` context manager): the dispatcher
only reaches processors that carry ``_attention_backend``, as this one does.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

__all__ = ["ViewAttnProcessor"]


class ViewAttnProcessor:
    """Self-attention per image (``joint=False``) or over all views of a batch item (``joint=True``).

    ``num_views`` comes with each call (``cross_attention_kwargs={"num_views": V}``); the batch axis of
    ``hidden_states`` must be B·V with the views of one item adjacent.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, joint: bool):
        self.joint = bool(joint)

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        num_views: int = 1,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise NotImplementedError("the CAP4D MMDM has self-attention only, without masks")
        bv, n, _ = hidden_states.shape
        if self.joint and bv % num_views:
            raise ValueError(f"batch {bv} is not a multiple of num_views {num_views}")
        groups = bv // num_views if self.joint else bv
        heads = attn.heads
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = q.shape[-1] // heads
        # dispatcher layout (batch, tokens, heads, head_dim); joint: the views' tokens form one sequence
        q, k, v = (t.reshape(groups, -1, heads, head_dim) for t in (q, k, v))
        out = dispatch_attention_fn(q, k, v, backend=self._attention_backend, parallel_config=self._parallel_config)
        out = out.reshape(bv, n, heads * head_dim).type_as(q)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)
