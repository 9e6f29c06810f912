"""The CAP4D generator on its own: views written atomically, resume decodes only, changed settings start over."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.flame import FlameParams
from backend.generators.cap4d import CAP4DGenerator, CAP4DSettings

from .cap4d_tiny import tiny_cap4d_scene
from .test_cap4d_maps import _camera


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_cap4d_scene(tmp_path_factory.mktemp("gen"), (-30.0, 30.0))


def test_generate_resume_and_settings_change(tmp_path, setup):
    flame, comp, ring = setup
    params = FlameParams.zeros(flame.model, 3)
    params.jaw_pose[2, 0] = 0.2
    ref_cam = _camera(64)
    matted = np.full((64, 64, 3), 255, np.uint8)
    matted[16:48, 16:48] = 120
    logs, prog = [], []

    def run(seed):
        gen = CAP4DGenerator(None, CAP4DSettings(seed=seed, quality="tiny", device="cpu"), components=comp)
        return gen.generate(ring, flame, params, [0, 2], FlameParams.zeros(flame.model, 1), ref_cam, matted,
                            tmp_path / "views", tmp_path / "state", progress=lambda d, t: prog.append((d, t)),
                            log=logs.append)

    out = run(1)
    assert out["images"] == 4 and out["steps"] == 2
    files = sorted((tmp_path / "views").rglob("*.png"))
    assert [f.relative_to(tmp_path / "views").as_posix() for f in files] == [
        "view0/0000.png", "view0/0001.png", "view1/0000.png", "view1/0001.png"]
    assert prog[-1] == (4, 4)  # 2 steps + 2 decoded views
    first = {f: f.read_bytes() for f in files}
    torch.manual_seed(123)  # global RNG state must not matter
    run(1)
    assert any("already sampled" in m for m in logs)
    assert {f: f.read_bytes() for f in files} == first
    run(2)
    assert any("settings changed" in m for m in logs)
    assert {f: f.read_bytes() for f in files} != first
