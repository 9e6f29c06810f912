"""The torch-free estimator (backend/estimates.py) is the generators' own: the add-on's numbers equal theirs."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from backend import estimates
from backend.cameras.rings import ring_preset
from backend.cap4d.cost import forward_flops, preset_cost
from backend.generators.cap4d import CAP4DSettings, estimate_vram
from backend.generators.mmvdm import MMVDMGenerator, MMVDMSettings
from backend.mmvdm.configs import count_parameters, mmvdm_2b_config
from backend.mmvdm.plan import build_plan
from backend.protocol import CAP4D_QUALITY_FOR_PRESET, PRESETS

CUDA = torch.device("cuda")  # bf16 "auto" dtype; no GPU needed to build the device object
MODES = ("low", "medium", "high", "lowest")


def _spec(vram: str) -> SimpleNamespace:
    return SimpleNamespace(vram=vram, seed=0, quality=None, dtype="auto", device=None, vae_tiling=None, offload=None)


def test_module_imports_without_torch():
    code = "import sys, backend.estimates as e; e.ui_estimate('mmvdm', 'tiny', 'low'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_constants_are_the_counted_ones():
    assert count_parameters(mmvdm_2b_config()) == estimates.MMVDM_2B_PARAMETERS
    assert forward_flops() == estimates.CAP4D_FORWARD_FLOPS_512
    assert preset_cost("medium")["flops"] == estimates.cap4d_flops("medium")["flops"]


@pytest.mark.parametrize("preset", ["preview", "120"])
def test_mmvdm_generator_reports_the_ui_estimate(preset):
    gen = MMVDMGenerator(settings=MMVDMSettings(), components=SimpleNamespace(
        transformer=SimpleNamespace(config=mmvdm_2b_config())))
    ring, p = ring_preset(preset), PRESETS[preset]
    peaks = {}
    for vram in MODES:
        gen.settings = MMVDMSettings.from_spec(SimpleNamespace(vram=vram))
        s = gen.settings
        plan = build_plan(ring, p.num_frames, s.steps_key, s.steps_other, window_frames=s.window_frames,
                          context_frames=s.context_frames)
        est = gen.estimate(s, gen._stage_shapes(plan, ring, p.resolution), CUDA)
        ui = estimates.ui_estimate("mmvdm", preset, vram)
        assert ui["peak_gib"] == est["peak"] / estimates.GiB, vram
        peaks[vram] = est["peak"]
    assert peaks["lowest"] <= peaks["low"] < peaks["medium"] <= peaks["high"]


@pytest.mark.parametrize("preset", ["tiny", "360"])
def test_cap4d_generator_reports_the_ui_estimate(preset):
    for vram in MODES:
        s = CAP4DSettings.from_spec(_spec(vram), preset)
        assert s.quality == CAP4D_QUALITY_FOR_PRESET[preset]
        ui = estimates.ui_estimate("cap4d", preset, vram.upper())
        assert ui["peak_gib"] == estimate_vram(s, CUDA)["peak"] / estimates.GiB, vram
    minutes = estimates.ui_estimate("cap4d", preset, "medium")["minutes"]
    if preset == "tiny":
        assert minutes is None  # a 64 px CPU smoke test: no GPU time quoted
    else:
        flops = preset_cost(CAP4D_QUALITY_FOR_PRESET[preset])["flops"]
        assert minutes == pytest.approx(flops / (estimates.ASSUMED_TFLOPS * 1e12) / 60.0)


def test_projection_has_no_gpu_figure():
    assert estimates.ui_estimate("projection", "360", "high") == {"peak_gib": None, "minutes": None}


def test_vram_modes_and_setting_choices_are_the_contracts():
    from backend.errors import MVP4DError
    from backend.protocol import DTYPES, VRAM_PRESETS

    assert set(estimates.MMVDM_VRAM) == set(estimates.CAP4D_VRAM) == set(VRAM_PRESETS)
    MMVDMSettings(dtype="auto").validate()
    with pytest.raises(MVP4DError) as e:
        MMVDMSettings(dtype="bf8").validate()
    assert e.value.code == "BAD_INPUT" and ", ".join(DTYPES) in e.value.message
