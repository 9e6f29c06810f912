"""The MMVDM transformer on tiny CPU configs: stock equivalence, layout, zero-init, attention scale, training paths."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.attention_processor import Attention

from backend.mmvdm import MMVDMAttnProcessor, MMVDMTransformer, attention_logit_scale, tiny_config
from backend.mmvdm.configs import count_parameters, forward_flops, memory_breakdown, estimate_memory, mmvdm_2b_config
from backend.mmvdm.weights import mmvdm_state_from_cogvideox

STOCK_KEYS = ("conditioning_channels", "attention_scale_mode", "base_token_count")


def stock_and_mmvdm(cc: int = 7, **mmvdm_kw):
    torch.manual_seed(0)
    cfg = tiny_config(cc)
    stock = CogVideoXTransformer3DModel(**{k: v for k, v in cfg.items() if k not in STOCK_KEYS}).eval()
    for p in stock.parameters():  # AdaLN-zero and output layers are not zero in a trained model
        p.data.normal_(0, 0.3)
    cfg.update(mmvdm_kw)
    model = MMVDMTransformer.from_config(cfg).eval()
    model.load_state_dict(mmvdm_state_from_cogvideox(stock.state_dict(), cfg))
    return stock, model


def test_v1_without_reference_equals_stock_cogvideox_exactly():
    """V = 1, no reference, no (or zero) conditioning == stock CogVideoX with identical weights, bit for bit.

    The honest stock call without text: ``CogVideoXTransformer3DModel`` built with ``max_text_seq_length=0`` and
    given a (B, 0, text_embed_dim) text tensor. Its patch embed then adds no text tokens and its joint position
    table is exactly the video sin/cos table; every block concatenates/splits empty text tensors, so it is the
    video-only computation the MMVDM performs for one view (weights: the stock state dict with the patch conv
    widened by zero conditioning channels). The §5 scale is made 1 (mode "none", or N_t equal to this call's
    token count) because stock CogVideoX has no such scale.
    """
    x = torch.randn(2, 1, 3, 4, 8, 8)
    t = torch.tensor([10, 900])
    for kw in ({"attention_scale_mode": "none"}, {"base_token_count": 3 * 4 * 4}):
        stock, model = stock_and_mmvdm(**kw)
        with torch.no_grad():
            ref = stock(x[:, 0], torch.zeros(2, 0, 16), t).sample
            out = model(x, t).sample
            out_zero_cond = model(x, t, conditioning=torch.zeros(2, 1, 3, 7, 8, 8)).sample
        assert out.shape == (2, 1, 3, 4, 8, 8)
        assert ref.abs().max() > 0.1
        assert torch.equal(out[:, 0], ref)
        assert torch.equal(out_zero_cond[:, 0], ref)


def test_token_layout_count_and_scale_per_call():
    _, model = stock_and_mmvdm(attention_scale_mode="printed")
    seen = []
    model.transformer_blocks[0].attn1.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((kwargs["hidden_states"].shape[1], kwargs["attn_logit_scale"])),
        with_kwargs=True)
    views, frames, h, w = 3, 2, 8, 6
    x = torch.randn(1, views, frames, 4, h, w)
    with torch.no_grad():
        out = model(x, 500, reference=torch.randn(1, 4, h, w)).sample
        model(x, 500)
    assert out.shape == (1, views, frames, 4, h, w)
    n = (1 + views * frames) * (h // 2) * (w // 2)
    assert model.num_tokens(views, frames, h, w) == n == 84
    assert model.num_tokens(views, frames, h, w, reference=False) == n - 12
    assert seen[0] == (n, pytest.approx(math.sqrt(math.log(13 * 32 * 32) / math.log(n))))
    assert seen[1][0] == n - 12


def test_views_are_symmetric_and_reference_matters():
    """Same positions for every view: swapping two views swaps their outputs; the reference changes them."""
    _, model = stock_and_mmvdm()
    x = torch.randn(1, 2, 2, 4, 4, 4)
    cond = torch.randn(1, 2, 2, 7, 4, 4)
    ref = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        a = model(x, 100, reference=ref, conditioning=cond).sample
        b = model(x.flip(1), 100, reference=ref, conditioning=cond.flip(1)).sample
        c = model(x, 100, reference=torch.randn(1, 4, 4, 4), conditioning=cond).sample
    torch.testing.assert_close(a, b.flip(1), atol=1e-5, rtol=1e-5)
    assert (a - c).abs().max() > 1e-4


def test_reference_temporal_embedding_starts_at_t0_encoding():
    _, model = stock_and_mmvdm()
    d4 = 16 // 4
    expected = torch.cat([torch.zeros(d4 // 2), torch.ones(d4 // 2)])  # sin(0) | cos(0)
    assert torch.equal(model.reference_temporal_embedding.detach(), expected)
    assert "reference_temporal_embedding" in dict(model.named_parameters())


@pytest.mark.parametrize("n", [2, 1000, 13 * 32 * 32, 14336, 107520])
def test_attention_scale_formula(n):
    nt = 13 * 32 * 32
    printed = math.sqrt(math.log(nt) / math.log(n))
    assert attention_logit_scale(n, nt, "printed") == pytest.approx(printed, rel=1e-12)
    assert attention_logit_scale(n, nt, "entropy") == pytest.approx(1 / printed, rel=1e-12)
    assert attention_logit_scale(n, nt, "none") == 1.0
    if n > nt:
        assert attention_logit_scale(n, nt, "printed") < 1 < attention_logit_scale(n, nt, "entropy")
    if n == 107520:  # 8 views x 13 latents x 32^2 + reference (reference note, §8)
        assert attention_logit_scale(n, mode="printed") == pytest.approx(0.905, abs=1e-3)
        assert attention_logit_scale(n, mode="entropy") == pytest.approx(1.105, abs=1e-3)
    with pytest.raises(ValueError):
        attention_logit_scale(n, nt, "sideways")


def test_processor_applies_scale_through_dispatcher():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, dim_head=8, heads=2, qk_norm="layer_norm", eps=1e-6, bias=True,
                     processor=MMVDMAttnProcessor())
    h = torch.randn(2, 10, 16)
    empty = torch.zeros(2, 0, 16)
    for s in (None, 0.7, 1.3):
        with torch.no_grad():
            out, enc = attn(h, empty, attn_logit_scale=s)
            q = attn.norm_q(attn.to_q(h).unflatten(-1, (2, 8))).transpose(1, 2)
            k = attn.norm_k(attn.to_k(h).unflatten(-1, (2, 8))).transpose(1, 2)
            v = attn.to_v(h).unflatten(-1, (2, 8)).transpose(1, 2)
            w = torch.softmax(q @ k.transpose(-1, -2) * (s or 1.0) / math.sqrt(8), dim=-1)
            manual = attn.to_out[0]((w @ v).transpose(1, 2).flatten(2))
        torch.testing.assert_close(out, manual, atol=1e-5, rtol=1e-5)
        assert enc.shape == (2, 0, 16)


def test_attention_backend_switch_reaches_the_processor():
    """``set_attention_backend`` (diffusers' dispatcher) reaches every MMVDM attention processor."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    _, model = stock_and_mmvdm()
    x = torch.randn(1, 2, 2, 4, 4, 4)
    active = _AttentionBackendRegistry._active_backend
    try:
        with torch.no_grad():
            a = model(x, 10, reference=x[:, 0, 0]).sample
            model.set_attention_backend("_native_math")
            assert {b.attn1.processor._attention_backend.value for b in model.transformer_blocks} == {"_native_math"}
            b = model(x, 10, reference=x[:, 0, 0]).sample
    finally:
        model.reset_attention_backend()
        _AttentionBackendRegistry.set_active_backend(active)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_same_gradients():
    _, model = stock_and_mmvdm()
    model.train()
    x = torch.randn(1, 2, 2, 4, 4, 4)
    cond = torch.randn(1, 2, 2, 7, 4, 4)
    ref = torch.randn(1, 4, 4, 4)
    ref_cond = torch.randn(1, 7, 4, 4)

    def grads():
        model.zero_grad()
        out = model(x, 300, reference=ref, conditioning=cond, reference_conditioning=ref_cond).sample
        out.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    ckpt = grads()
    assert plain.keys() == ckpt.keys()
    assert "reference_temporal_embedding" in plain
    assert plain["patch_embed.proj.weight"][:, 4:].abs().max() > 0  # gradients reach the zero-init channels
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_regional_compile_matches_eager():
    _, model = stock_and_mmvdm()
    x = torch.randn(1, 2, 2, 4, 4, 4)
    ref = torch.randn(1, 4, 4, 4)
    cond = torch.randn(1, 2, 2, 7, 4, 4)
    with torch.no_grad():
        eager = model(x, 50, reference=ref, conditioning=cond).sample
        model.compile_repeated_blocks(backend="eager", fullgraph=True)
        compiled = model(x, 50, reference=ref, conditioning=cond).sample
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in model.transformer_blocks)
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-6)
    torch._dynamo.reset()


def test_fused_qkv_keeps_output():
    _, model = stock_and_mmvdm()
    x = torch.randn(1, 1, 2, 4, 4, 4)
    with torch.no_grad():
        a = model(x, 10).sample
        model.fuse_qkv_projections()
        b = model(x, 10).sample
        model.unfuse_qkv_projections()
        c = model(x, 10).sample
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert torch.equal(a, c)


def test_bad_shapes_raise():
    _, model = stock_and_mmvdm()
    with pytest.raises(ValueError, match="conditioning"):
        model(torch.randn(1, 1, 2, 4, 4, 4), 1, conditioning=torch.randn(1, 1, 2, 3, 4, 4))
    with pytest.raises(ValueError, match="hidden_states"):
        model(torch.randn(1, 2, 4, 4, 4), 1)


def test_flop_formula_matches_flop_counter():
    """The analytic count equals torch's FlopCounterMode on the tiny model (math attention, so the counter sees
    the attention matmuls as bmm; it does not count the fused CPU flash kernel)."""
    from diffusers.models.attention_dispatch import attention_backend
    from torch.utils.flop_counter import FlopCounterMode

    _, model = stock_and_mmvdm()
    views, frames, h, w = 2, 3, 8, 8
    with torch.no_grad(), FlopCounterMode(display=False) as counter, attention_backend("_native_math"):
        model(torch.randn(1, views, frames, 4, h, w), 10, reference=torch.randn(1, 4, h, w),
              conditioning=torch.randn(1, views, frames, 7, h, w), reference_conditioning=torch.randn(1, 7, h, w))
    flops = forward_flops(model.config, views, frames, h, w)
    assert flops["tokens"] == model.num_tokens(views, frames, h, w)
    assert flops["total"] == counter.get_total_flops()


def test_2b_config_size_flops_and_memory():
    cfg = mmvdm_2b_config()
    assert count_parameters(cfg) == 1_693_783_872 + 1920 * 59 * 4 + 480  # CogVideoX-2B + new channels + ref PE
    f = forward_flops(cfg, views=8, frames=13, height=64, width=64)
    assert f["tokens"] == 107_520
    assert f["total"] / 1e15 == pytest.approx(2.949, abs=1e-3)
    mem = memory_breakdown(cfg, views=8, frames=49, res=512, cfg_mode="multiview")
    assert mem["weights"] == count_parameters(cfg) * 2
    assert 7e9 < mem["total"] < 10e9
    assert estimate_memory(cfg, 8, 49, 512, torch.bfloat16, "conventional") > mem["total"]
    assert estimate_memory(cfg, 4, 49, 512) < mem["total"]
    from backend.errors import MVP4DError

    with pytest.raises(MVP4DError) as e:
        estimate_memory(cfg, 8, 48, 512)
    assert e.value.code == "BAD_INPUT"
