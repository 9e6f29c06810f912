"""Which §5 attention-scale mode keeps the attention entropy of a CogVideoX-style attention constant.

The paper (§5) scales the attention logits by a factor of the token count N_i relative to CogVideoX's
N_t = 13·32·32 and cites Jin et al. 2023, whose argument is that attention entropy grows with log N.
The printed factor sqrt(log N_t / log N_i) and the cited one sqrt(log N_i / log N_t) point in opposite
directions (:mod:`.attention`). This module measures them.

Set-up (the MMVDM's own token layout and attention shape, random weights): tokens are the 2B model's
3-D sin/cos positions (the same spatial/temporal encoding replicated across the views, as the paper
does) plus random content, LayerNorm-ed; one CogVideoX attention head (qk-LayerNorm, head dim 64) with
random projections. ``qk_gain`` is the qk-LayerNorm gain (1 = untrained init; trained CogVideoX gains are
larger): the logits' spread is about ``qk_gain**2``. N_t = 1 view × 13 latent frames × 32×32, N_i = the
8-view pass, 1 + 8 × 13 latent frames × 32×32 = 107,520. The entropy of ``queries`` sampled query rows
over *all* N keys is exact for those rows (no approximation of the softmax).

Measured quantity: the attention entropy relative to uniform attention, H / log N (1 = attends to every
token equally, 0 = to one token) — the quantity Jin et al.'s derivation holds fixed: for logits of spread
s, H ≈ log N − λ²s²/2, so H / log N is constant exactly when λ² ∝ log N. The raw entropy H grows by
log(N_i / N_t) ≈ 2.1 nats whatever the scale (no logit scale can remove the extra tokens' share), so it
is reported too but is not the criterion. ``python -m backend.mmvdm.attention_entropy`` prints the table
recorded in docs/architecture.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from .attention import ATTENTION_SCALE_MODES, BASE_TOKEN_COUNT, attention_logit_scale

__all__ = ["EIGHT_VIEW_TOKEN_COUNT", "cogvideox_style_tokens", "attention_entropy", "measure", "main"]

#: tokens of the paper's 8-view pass: the reference frame + 8 views × 13 latent frames, 32×32 each
EIGHT_VIEW_TOKEN_COUNT = (1 + 8 * 13) * 32 * 32


def _sincos(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """(n, dim) sin/cos encoding of integer positions (the CogVideoX/MAE 1-D formula)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def cogvideox_style_tokens(views: int, frames: int, height: int = 32, width: int = 32, dim: int = 192,
                           reference: bool = False, seed: int = 0) -> torch.Tensor:
    """(N, dim) hidden states laid out like the MMVDM's sequence: [reference frame;] views × frames × h × w.

    Positions: CogVideoX-2B's 3-D sin/cos split (1/4 of the channels temporal, 3/8 each for rows and
    columns), the same encoding in every view; the reference frame takes temporal position 0. Content:
    seeded Gaussian noise of the same scale. The sum is LayerNorm-ed like the block's input norm.
    """
    t_dim, s_dim = dim // 4, 3 * dim // 8
    t, y, x = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    pos = torch.cat([_sincos(t.reshape(-1), t_dim), _sincos(y.reshape(-1), s_dim), _sincos(x.reshape(-1), s_dim)], 1)
    pos = pos.repeat(views, 1)
    if reference:
        pos = torch.cat([pos[: height * width], pos], 0)  # reference frame: temporal position 0
    g = torch.Generator().manual_seed(seed)
    h = pos.float() + torch.randn(pos.shape, generator=g) / math.sqrt(2.0)
    return torch.nn.functional.layer_norm(h, (dim,))


class _Head:
    """One CogVideoX attention head with random weights: q/k projections with bias and qk-LayerNorm."""

    def __init__(self, dim: int, head_dim: int = 64, qk_gain: float = 1.0, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.wq = torch.randn(dim, head_dim, generator=g) / math.sqrt(dim)
        self.wk = torch.randn(dim, head_dim, generator=g) / math.sqrt(dim)
        self.bq = 0.02 * torch.randn(head_dim, generator=g)
        self.bk = 0.02 * torch.randn(head_dim, generator=g)
        self.gain, self.head_dim = float(qk_gain), head_dim

    def q(self, h: torch.Tensor) -> torch.Tensor:
        return self.gain * torch.nn.functional.layer_norm(h @ self.wq + self.bq, (self.head_dim,))

    def k(self, h: torch.Tensor) -> torch.Tensor:
        return self.gain * torch.nn.functional.layer_norm(h @ self.wk + self.bk, (self.head_dim,))


def attention_entropy(q: torch.Tensor, k: torch.Tensor, logit_scale: float, chunk: int = 64) -> float:
    """Mean entropy (nats) of softmax(logit_scale · q kᵀ / sqrt(d)) over the rows of ``q`` (all keys)."""
    d = q.shape[-1]
    total = 0.0
    for s in range(0, len(q), chunk):
        logits = (q[s:s + chunk] @ k.T) * (logit_scale / math.sqrt(d))
        logp = torch.log_softmax(logits.double(), dim=-1)
        total += float(-(logp.exp() * logp).sum(-1).sum())
    return total / len(q)


def measure(qk_gain: float = 1.6, queries: int = 256, height: int = 32, width: int = 32, frames: int = 13,
            views: int = 8, dim: int = 192, seed: int = 0) -> dict:
    """Attention entropy at N_t (1 view, no reference) and N_i (``views`` + reference) for every mode.

    Returns ``{"n_train", "n_infer", "qk_gain", "logit_std", "modes": {mode: {"scale", "H_train",
    "H_infer", "rel_H_train", "rel_H_infer", "rel_change", "raw_change"}}}``; ``rel_*`` are H / log N and
    ``rel_change`` = rel_H_infer / rel_H_train − 1 (the criterion), ``raw_change`` the same for H.
    The query rows are a seeded sample of the first view's tokens (the same positions in both runs).
    """
    head = _Head(dim, qk_gain=qk_gain, seed=seed + 1)
    small = cogvideox_style_tokens(1, frames, height, width, dim, reference=False, seed=seed)
    large = cogvideox_style_tokens(views, frames, height, width, dim, reference=True, seed=seed)
    n_t, n_i = len(small), len(large)
    rows = torch.randperm(frames * height * width, generator=torch.Generator().manual_seed(seed + 2))[:queries]
    q_t, k_t = head.q(small[rows]), head.k(small)
    q_i, k_i = head.q(large[height * width + rows]), head.k(large)  # the same tokens of view 0
    logit_std = float(((q_t @ k_t.T) / math.sqrt(q_t.shape[-1])).std())
    out = {"n_train": n_t, "n_infer": n_i, "qk_gain": qk_gain, "logit_std": round(logit_std, 3), "modes": {}}
    h_train = attention_entropy(q_t, k_t, 1.0)  # at N_t every mode's factor is 1
    for mode in ATTENTION_SCALE_MODES:
        scale = attention_logit_scale(n_i, n_t, mode)
        h_inf = attention_entropy(q_i, k_i, scale)
        rel_t, rel_i = h_train / math.log(n_t), h_inf / math.log(n_i)
        out["modes"][mode] = {"scale": round(scale, 4), "H_train": round(h_train, 4), "H_infer": round(h_inf, 4),
                              "rel_H_train": round(rel_t, 4), "rel_H_infer": round(rel_i, 4),
                              "rel_change": round(rel_i / rel_t - 1.0, 4), "raw_change": round(h_inf / h_train - 1.0, 4)}
    return out


def _table(results: list[dict]) -> str:
    lines = ["qk gain | logit std | mode    | scale  | H/logN @N_t | H/logN @N_i | change | raw H change",
             "--------|-----------|---------|--------|-------------|-------------|--------|-------------"]
    for r in results:
        for mode, m in r["modes"].items():
            lines.append(f"{r['qk_gain']:7.2f} | {r['logit_std']:9.2f} | {mode:7s} | {m['scale']:.4f} | "
                         f"{m['rel_H_train']:11.4f} | {m['rel_H_infer']:11.4f} | {100 * m['rel_change']:+5.1f} % | "
                         f"{100 * m['raw_change']:+6.1f} %")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend.mmvdm.attention_entropy",
                                description="Measure which §5 attention-scale mode keeps attention entropy constant "
                                            f"from {BASE_TOKEN_COUNT} to {EIGHT_VIEW_TOKEN_COUNT} tokens.")
    p.add_argument("--qk-gain", type=float, nargs="+", default=[1.0, 1.6, 2.0])
    p.add_argument("--queries", type=int, default=256)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = [measure(g, queries=a.queries) for g in a.qk_gain]
    print(json.dumps(results, indent=2) if a.json else _table(results))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
