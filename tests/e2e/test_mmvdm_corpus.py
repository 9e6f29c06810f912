"""``corpus --generator mmvdm`` end to end with a tiny randomly initialised MMVDM saved to disk."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLCogVideoX
from PIL import Image

from backend.mmvdm.configs import tiny_config, tiny_vae_config
from backend.mmvdm.schedule import SCHEDULER_CONFIG
from backend.mmvdm.transformer import MMVDMTransformer
from backend.mmvdm.weights import save_mmvdm
from backend.protocol import PRESETS

from .conftest import run_backend


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("w") / "mmvdm-tiny"
    save_mmvdm(folder, MMVDMTransformer.from_config(tiny_config()), AutoencoderKLCogVideoX(**tiny_vae_config()),
               dict(SCHEDULER_CONFIG))
    return folder


def test_tiny_preset_through_the_plan(tmp_path, astronaut_png, tiny_weights):
    out = tmp_path / "job"
    code, events, err = run_backend("corpus", "--image", str(astronaut_png), "--out", str(out), "--preset", "tiny",
                                    "--generator", "mmvdm", "--weights", str(tiny_weights),
                                    "--steps-key", "3", "--steps-other", "2")
    assert code == 0, err[-3000:]
    preset = PRESETS["tiny"]
    manifest = json.loads((out / "stages/corpus/corpus.json").read_text())
    assert manifest["generator"] == "mmvdm"
    for v in manifest["views"]:
        frames = sorted((out / "stages/corpus" / v["dir"]).glob("*.png"))
        assert len(frames) == preset.num_frames
        assert np.asarray(Image.open(frames[0])).shape == (preset.resolution, preset.resolution, 3)
    assert list((out / "stages/corpus/mmvdm").glob("*.safetensors"))  # per-pass checkpoints
    assert any(e.type == "log" and "memory estimate" in (e.message or "") for e in events)  # VRAM reported first
    assert events[-1].type == "done"


def test_missing_weights_is_reported(tmp_path, astronaut_png):
    code, events, _ = run_backend("corpus", "--image", str(astronaut_png), "--out", str(tmp_path / "job"),
                                  "--preset", "tiny", "--generator", "mmvdm", "--weights", str(tmp_path / "none"))
    assert code != 0
    assert events[-1].type == "error" and events[-1].code == "WEIGHTS_MISSING"
    assert not (tmp_path / "job/stages/corpus/done.json").exists()
