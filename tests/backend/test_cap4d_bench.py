"""CAP4D cost model and benchmark: the FLOP count matches the reference's measured 14.0 TFLOP per forward."""

from __future__ import annotations

import pytest

from backend.cap4d.bench import bench_cap4d
from backend.cap4d.cost import forward_flops, preset_cost


def test_full_size_forward_and_preset_costs():
    f = forward_flops()  # 2 × 8 images at 512², counted on the meta device
    assert f == pytest.approx(14.0e12, rel=0.01)
    assert forward_flops(cfg=False) * 2 == f
    costs = {q: preset_cost(q) for q in ("low", "medium", "high")}
    assert [c["groups_per_step"] for c in costs.values()] == [30, 60, 120]  # 7 targets beside 1 reference
    assert [round(c["flops"] / 1e15) for c in costs.values()] == [21, 42, 168]


def test_bench_runs_tiny_on_cpu():
    r = bench_cap4d(size="tiny", views=3, res=64, dtype="fp32", steps=1, device="cpu")
    assert r["output_shape"] == [2, 3, 4, 8, 8] and r["finite"]
    assert r["seconds_per_forward"] > 0 and r["achieved_tflops"] > 0 and 0 < r["fraction_of_matmul"]
    assert r["flops_per_forward"] == forward_flops(3, 64, model_channels=32)


def test_vram_estimate_refuses_before_loading_and_names_a_setting(monkeypatch):
    import torch

    from backend.errors import MVP4DError
    from backend.generators.cap4d import CAP4DGenerator, CAP4DSettings, GiB

    gen = CAP4DGenerator(None, CAP4DSettings(device="cuda", dtype="bf16"), components=object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for free, words in ((5, "--vram low"), (2, "too little")):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, f=free: (int(f * GiB), int(80 * GiB)))
        with pytest.raises(MVP4DError) as e:
            gen.check_memory(lambda m: None)
        assert e.value.code == "OUT_OF_MEMORY" and words in e.value.hint
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(40 * GiB), int(80 * GiB)))
    assert gen.check_memory(lambda m: None)["peak"] < 40 * GiB
