"""The MMVDM (paper §3–5, S2.1): CogVideoX-2B's transformer and VAE from diffusers, made multi-view.

``transformer`` (``MMVDMTransformer``), ``attention`` (§5 logit scale, dispatcher processor), ``embeddings``
(multi-view positions), ``vae`` (``MMVDMVae``), ``weights`` (build / check / load weight folders),
``configs`` (configs, FLOP and memory model), ``bench`` (``python -m backend.mmvdm.bench``), plus the
sampler and plan modules. Names below are imported lazily, so ``backend.mmvdm.plan`` does not pull in
torch and diffusers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ATTENTION_SCALE_MODES": "attention", "BASE_TOKEN_COUNT": "attention", "MMVDMAttnProcessor": "attention",
    "attention_logit_scale": "attention", "MMVDMTransformer": "transformer", "MMVDMVae": "vae",
    "MMVDMComponents": "weights", "build_mmvdm_from_cogvideox": "weights", "check_weights": "weights",
    "load_mmvdm": "weights", "save_mmvdm": "weights", "estimate_memory": "configs", "forward_flops": "configs",
    "memory_breakdown": "configs", "mmvdm_2b_config": "configs", "tiny_config": "configs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
