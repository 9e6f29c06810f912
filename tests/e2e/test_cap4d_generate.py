"""``generate --generator cap4d --preset tiny`` end to end on CPU with a tiny LDM-format checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from backend.flame.io import save_flame_npz
from backend.protocol import PRESETS

from ..backend.cap4d_flame import cap4d_geometry, flame_layout_head
from ..backend.cap4d_tiny import write_tiny_checkpoint
from .conftest import REPO, run_backend


@pytest.fixture(scope="module")
def cap4d_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cap4d")
    model = flame_layout_head()
    flame = save_flame_npz(model, d / "flame_layout.npz")
    ckpt = write_tiny_checkpoint(d / "tiny_mmdm.ckpt", geometry=cap4d_geometry(model))
    proc = subprocess.run([sys.executable, "-m", "backend", "weights", "convert", "--from", str(ckpt), "--out",
                           str(d / "weights")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and json.loads(proc.stdout)["format"] == "cap4d-mmdm", proc.stderr[-2000:]
    return flame, d / "weights", ckpt


def test_generate_tiny_end_to_end(tmp_path, astronaut_png, cap4d_inputs):
    flame, weights, _ = cap4d_inputs
    out = tmp_path / "job"
    code, events, err = run_backend("generate", "--image", str(astronaut_png), "--out", str(out), "--preset", "tiny",
                                    "--flame", str(flame), "--generator", "cap4d", "--weights", str(weights),
                                    "--fit-iterations", "30", "--seed", "3", timeout=900)
    assert code == 0, err[-3000:]
    manifest = json.loads((out / "stages/corpus/corpus.json").read_text())
    assert manifest["generator"] == "cap4d"
    preset = PRESETS["tiny"]
    frames = manifest["num_frames"]
    assert frames == 2  # 12-image budget over 6 views
    for v in manifest["views"]:
        imgs = sorted((out / "stages/corpus" / v["dir"]).glob("*.png"))
        assert len(imgs) == frames
        a = np.asarray(Image.open(imgs[0]))
        assert a.shape == (preset.resolution, preset.resolution, 3)
    assert any(e.type == "done" for e in events)
    assert (out / "stages/corpus/cap4d/latents.safetensors").is_file()
    assert any((out / "outputs").iterdir())
    logs = " ".join(e.message or "" for e in events if e.type == "log")
    assert "CAP4D memory estimate" in logs and "12 images" in logs

    # same seed -> same corpus: rerun the corpus stage in a second job
    out2 = tmp_path / "job2"
    code, _e, err = run_backend("corpus", "--image", str(astronaut_png), "--out", str(out2), "--preset", "tiny",
                                "--flame", str(flame), "--generator", "cap4d", "--weights", str(weights), "--seed", "3")
    assert code == 0, err[-3000:]
    for v in manifest["views"]:
        for f in range(frames):
            a = np.asarray(Image.open(out / "stages/corpus" / v["dir"] / f"{f:04d}.png")).astype(int)
            b = np.asarray(Image.open(out2 / "stages/corpus" / v["dir"] / f"{f:04d}.png")).astype(int)
            assert np.abs(a - b).max() <= 1


def test_toy_head_fails_at_once_with_flame_required(tmp_path, astronaut_png, cap4d_inputs):
    _, weights, _ = cap4d_inputs
    out = tmp_path / "job"
    code, events, _ = run_backend("generate", "--image", str(astronaut_png), "--out", str(out), "--preset", "tiny",
                                  "--generator", "cap4d", "--weights", str(weights))
    assert code == 1
    err = [e for e in events if e.type == "error"][-1]
    assert err.code == "FLAME_REQUIRED" and "flame.is.tue.mpg.de" in err.hint
    assert not out.exists() or not any(out.iterdir())


def test_missing_and_wrong_weights(tmp_path, astronaut_png, cap4d_inputs):
    flame, _, _ = cap4d_inputs
    for weights, code_want in ((tmp_path / "nope", "WEIGHTS_MISSING"), (astronaut_png, "WEIGHTS_INVALID")):
        code, events, _ = run_backend("corpus", "--image", str(astronaut_png), "--out", str(tmp_path / code_want),
                                      "--preset", "tiny", "--flame", str(flame), "--generator", "cap4d",
                                      "--weights", str(weights))
        assert code == 1
        assert [e for e in events if e.type == "error"][-1].code == code_want
