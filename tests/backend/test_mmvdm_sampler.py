"""The MMVDM sampler (backend/mmvdm/sampler.py): scheduler, modes 1-4, multi-view CFG, joint / composed /
preview samplers, determinism and cancellation — on the tiny random MMVDM (no weights)."""

from __future__ import annotations

import time

import pytest
import torch

from backend.errors import Cancelled, MVP4DError
from backend.mmvdm.configs import tiny_config
from backend.mmvdm.guidance import guidance_scale, guidance_scales, mode_masks
from backend.mmvdm.sampler import sample
from backend.mmvdm.schedule import SCHEDULER_CONFIG, _ddim_step, make_scheduler, schedule
from backend.mmvdm.transformer import MMVDMTransformer

V, T, C, H, W, CC = 4, 3, 4, 8, 8, 59


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MMVDMTransformer.from_config(tiny_config()).eval()


class Spy(torch.nn.Module):
    """Records every forward's shapes and inputs; v = a function of all inputs (so CFG is visible)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.calls = []

    def forward(self, hidden_states, timestep, reference=None, conditioning=None, reference_conditioning=None,
                attention_kwargs=None, return_dict=True):
        self.calls.append(dict(shape=tuple(hidden_states.shape), t=timestep.tolist(),
                               ref=None if reference is None else float(reference.abs().sum()),
                               cond=None if conditioning is None else float(conditioning.abs().sum())))
        out = self.w * hidden_states
        if reference is not None:
            out = out + reference.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1, 1, 1)
        if conditioning is not None:
            out = out + conditioning.mean(dim=3, keepdim=True)[:, :, :, :1]
        return type("Out", (), {"sample": out})()


def _inputs(seed=0, mode=2, R=2, Cl=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(C, H, W, generator=g)
    cond = torch.randn(V, T, CC, H, W, generator=g) * 0.1
    rc = torch.randn(CC, H, W, generator=g) * 0.1
    clean = torch.randn(V, T, C, H, W, generator=g)
    mask = mode_masks(mode, V, T, R, Cl)
    return dict(reference_latent=ref, conditioning=cond, reference_conditioning=rc, clean_latents=clean,
                clean_mask=mask)


# --------------------------------------------------------------------------------------------
# scheduler
# --------------------------------------------------------------------------------------------


def test_scheduler_is_cogvideox_2b():
    s = make_scheduler()
    for k, v in SCHEDULER_CONFIG.items():
        assert s.config[k] == v, k
    assert s.config.prediction_type == "v_prediction" and s.config.timestep_spacing == "trailing"
    assert float(s.alphas_cumprod[999]) == 0.0  # zero terminal SNR
    assert abs(float(s.alphas_cumprod[500]) - 0.0953) < 1e-3  # SNR shift 3 (reference note §4.1)
    ts, alphas = schedule(s, 100)
    assert ts[:3] == [999, 989, 979] and ts[-1] == 9 and alphas[-1] == 1.0 and len(alphas) == 101
    ts, _ = schedule(s, 50)
    assert ts[:2] == [999, 979] and ts[-1] == 19
    with pytest.raises(MVP4DError) as e:
        make_scheduler({"prediction_type": "epsilon"})
    assert e.value.code == "WEIGHTS_MISMATCH"


def test_ddim_step_equals_diffusers_step():
    s = make_scheduler()
    ts, alphas = schedule(s, 50)
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    for i in (0, 1, 25, 49):
        ref = s.step(v, ts[i], x).prev_sample
        assert torch.allclose(_ddim_step(x, v, alphas[i], alphas[i + 1]), ref, atol=1e-6)


# --------------------------------------------------------------------------------------------
# modes and guidance scales
# --------------------------------------------------------------------------------------------


def _pic(m):
    return ["".join("#" if b else "." for b in row) for row in m.tolist()]


def test_mode_masks_match_fig3():
    # rows: views (reference views first), columns: latent frames; # = clean input (b = 1)
    assert _pic(mode_masks(1, 4, 7)) == ["......."] * 4
    assert _pic(mode_masks(2, 8, 7, num_reference_views=4)) == ["#######"] * 4 + ["......."] * 4
    assert _pic(mode_masks(3, 4, 7, num_context_latent_frames=3)) == ["###...."] * 4
    assert _pic(mode_masks(4, 8, 7, 4, 3)) == ["#######"] * 4 + ["###...."] * 4
    assert mode_masks(1, 2, 13).dtype == torch.bool and mode_masks(1, 2, 13).shape == (2, 13)
    for bad in [(1, 4, 7, 1, 0), (2, 4, 7, 0, 0), (2, 4, 7, 4, 0), (3, 4, 7, 0, 7), (3, 4, 7, 1, 3), (4, 4, 7, 2, 0),
                (5, 4, 7, 0, 0)]:
        with pytest.raises(MVP4DError):
            mode_masks(*bad)


def test_guidance_scale_follows_angle_rule():
    assert guidance_scale(0.0) == pytest.approx(1.1)  # at a reference view
    assert guidance_scale(180.0) == pytest.approx(1.6)  # the far end (paper §5: 180 degrees)
    assert guidance_scale(90.0) == pytest.approx(1.35)
    assert guidance_scale(45.0) == pytest.approx(1.225)
    assert guidance_scale(-45.0) == pytest.approx(1.225)
    assert guidance_scale(400.0) == pytest.approx(1.6)  # clamped
    xs = [0, 10, 60, 120, 170, 180]
    s = guidance_scales(xs)
    assert all(b > a for a, b in zip(s, s[1:]))  # increasing
    assert all(abs((b - a) / (y - x) - 0.5 / 180) < 1e-9 for (x, a), (y, b) in zip(zip(xs, s), zip(xs[1:], s[1:])))
    with pytest.raises(MVP4DError):
        guidance_scale(float("nan"))


# --------------------------------------------------------------------------------------------
# CFG forms (spy model)
# --------------------------------------------------------------------------------------------


def test_multiview_cfg_runs_one_unconditional_pass_per_generated_view():
    spy, kw = Spy(), _inputs(mode=2, R=2)
    scales = [1.1, 1.2, 1.3, 1.6]
    sample(spy, (V, T, C, H, W), **kw, steps=2, guidance="multiview", guidance_scale=scales, sub_batch=1)
    per_step = spy.calls[:3]
    assert per_step[0]["shape"] == (1, V, T, C, H, W) and per_step[0]["ref"] > 0 and per_step[0]["cond"] > 0
    # two generated views (the two reference views get no unconditional pass), each alone, all zeroed
    assert [c["shape"] for c in per_step[1:]] == [(1, 1, T, C, H, W)] * 2
    assert all(c["ref"] == 0.0 and c["cond"] is None for c in per_step[1:])
    assert len(spy.calls) == 6
    spy.calls.clear()
    sample(spy, (V, T, C, H, W), **kw, steps=2, guidance="multiview", guidance_scale=scales)  # batched
    assert [c["shape"] for c in spy.calls[:2]] == [(1, V, T, C, H, W), (2, 1, T, C, H, W)]
    spy.calls.clear()
    sample(spy, (V, T, C, H, W), **kw, steps=2, guidance="conventional", guidance_scale=1.5)
    assert [c["shape"] for c in spy.calls[:2]] == [(1, V, T, C, H, W)] * 2 and spy.calls[1]["ref"] == 0.0
    spy.calls.clear()
    sample(spy, (V, T, C, H, W), **kw, steps=2, guidance="none", guidance_scale=1.5)
    assert len(spy.calls) == 2
    spy.calls.clear()
    sample(spy, (V, T, C, H, W), **kw, steps=2, guidance="multiview", guidance_scale=1.0)  # scale 1: no uncond
    assert len(spy.calls) == 2


def test_guided_prediction_is_uncond_plus_scaled_difference():
    """One step from t = 999 (ᾱ = 0): x₀ = −v, so the result exposes the guided v directly."""
    spy, kw = Spy(), _inputs(mode=1, R=0)
    kw.pop("clean_latents"), kw.pop("clean_mask")
    scales = torch.tensor([1.1, 1.3, 1.5, 1.6])
    out = sample(spy, (V, T, C, H, W), **kw, steps=1, guidance="multiview", guidance_scale=scales, seed=3)
    x = torch.randn((V, T, C, H, W), generator=torch.Generator().manual_seed(3))
    vc = spy.w * x + kw["reference_latent"].mean() + kw["conditioning"].mean(dim=2, keepdim=True)[:, :, :1]
    vu = spy.w * x  # zero reference (mean 0) and no conditioning
    guided = vu + scales.view(-1, 1, 1, 1, 1) * (vc - vu)
    assert torch.allclose(out, -guided.detach(), atol=1e-5)


# --------------------------------------------------------------------------------------------
# the tiny real model: determinism, clean slots, cancellation, samplers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["joint", "composed", "preview"])
def test_sampling_is_deterministic_and_keeps_clean_slots(model, sampler):
    kw = _inputs(mode=4, R=2, Cl=1)
    args = dict(steps=6, guidance="multiview", guidance_scale=[1.1, 1.2, 1.4, 1.6], sampler=sampler)
    t0 = time.time()
    a = sample(model, (V, T, C, H, W), **kw, **args, seed=7)
    b = sample(model, (V, T, C, H, W), **kw, **args, seed=7)
    c = sample(model, (V, T, C, H, W), **kw, **args, seed=8)
    print(f"{sampler}: 3 runs of 6 steps in {time.time() - t0:.2f} s")
    assert torch.equal(a, b)  # bit-for-bit
    assert not torch.allclose(a, c)
    m = kw["clean_mask"]
    assert torch.equal(a[m], kw["clean_latents"][m])  # clean slots come back exactly
    assert a.dtype == torch.float32 and torch.isfinite(a).all() and a.shape == (V, T, C, H, W)


def test_batched_and_sequential_cfg_agree(model):
    kw = _inputs(mode=2, R=1)
    args = dict(steps=4, guidance="multiview", guidance_scale=1.4, seed=1)
    a = sample(model, (V, T, C, H, W), **kw, **args, sub_batch=None)
    b = sample(model, (V, T, C, H, W), **kw, **args, sub_batch=1)
    assert torch.allclose(a, b, atol=1e-4)


def test_check_stops_between_steps_and_progress_counts(model):
    calls, seen = [], []

    def check():
        calls.append(1)
        if len(calls) == 3:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        sample(model, (V, T, C, H, W), **_inputs(), steps=10, progress=lambda d, t: seen.append((d, t)), check=check)
    assert seen == [(1, 10), (2, 10)]  # two full steps, then stopped before the third
    seen.clear()
    sample(model, (V, T, C, H, W), **_inputs(), steps=5, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 5) for i in range(1, 6)]


def test_composed_sampler_factorises_views_and_frames():
    spy, kw = Spy(), _inputs(mode=3, R=0, Cl=1)  # 4 views generated at latent frames 1, 2
    sample(spy, (V, T, C, H, W), **kw, steps=3, guidance="none", sampler="composed", vrs_steps=1, sub_batch=1)
    shapes = [c["shape"] for c in spy.calls]
    per_round = [(1, 1, T, C, H, W)] * V + [(1, V, 1, C, H, W)] * 2  # per-view videos, per-frame multi-view sets
    assert shapes == per_round * 4  # 3 steps + 1 variance-reducing rollback in the first step
    spy.calls.clear()
    sample(spy, (V, T, C, H, W), **kw, steps=3, guidance="multiview", guidance_scale=1.3, sampler="composed",
           vrs_steps=0)
    assert [c["shape"] for c in spy.calls[:3]] == [(V, 1, T, C, H, W), (2, V, 1, C, H, W), (V, 1, T, C, H, W)]
    assert spy.calls[2]["ref"] == 0.0 and spy.calls[2]["cond"] is None  # per-view unconditional passes


def test_preview_sampler_runs_low_resolution_then_refines():
    spy, kw = Spy(), _inputs(mode=2, R=1)
    seen = []
    out = sample(spy, (V, T, C, H, W), **kw, steps=10, guidance="none", sampler="preview", preview_steps=2,
                 refine_strength=0.5, progress=lambda d, t: seen.append((d, t)))
    shapes = [c["shape"] for c in spy.calls]
    assert shapes == [(1, V, T, C, H // 2, W // 2)] * 2 + [(1, V, T, C, H, W)] * 5  # 2 preview + half of 10
    assert seen[-1] == (7, 7) and out.shape == (V, T, C, H, W)
    spy.calls.clear()
    quick = sample(spy, (V, T, C, H, W), **kw, steps=10, guidance="none", sampler="preview", preview_steps=2,
                   refine_strength=0.0)
    assert len(spy.calls) == 2 and torch.equal(quick[:1], kw["clean_latents"][:1])
    with pytest.raises(MVP4DError):
        sample(spy, (V, T, C, 6, 6), steps=2, sampler="preview")  # 3x3 latents cannot be patchified


def test_bad_arguments_are_bad_input(model):
    with pytest.raises(MVP4DError):
        sample(model, (V, T, C, H, W), steps=2, guidance="loud")
    with pytest.raises(MVP4DError):
        sample(model, (V, T, C, H, W), steps=2, sampler="magic")
    with pytest.raises(MVP4DError):
        sample(model, (V, T, C, H, W), steps=2, guidance_scale=[1.0, 2.0])
    with pytest.raises(MVP4DError):
        sample(model, (V, T, C, H, W), clean_mask=mode_masks(2, V, T, 1), steps=2)  # no clean latents
    with pytest.raises(MVP4DError):
        sample(model, (V, T, C, H, W), steps=0)
