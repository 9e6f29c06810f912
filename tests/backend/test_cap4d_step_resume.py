"""CAP4D's per-step checkpoint (backend/generators/cap4d.py StepCheckpoint): a run cancelled between two
denoising steps resumes at its last finished step and gives the uninterrupted run's views bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.errors import Cancelled
from backend.flame import FlameParams
from backend.generators.cap4d import CAP4DGenerator, CAP4DSettings

from .cap4d_tiny import tiny_cap4d_scene
from .test_cap4d_maps import _camera

FRAMES = [0, 1, 2]


@pytest.fixture(scope="module")
def cap4d_setup(tmp_path_factory):
    """4 views × 3 frames = 12 targets: two groups of 7 per step (1 reference)."""
    flame, comp, ring = tiny_cap4d_scene(tmp_path_factory.mktemp("cap4d"), (-40.0, -15.0, 15.0, 40.0))
    params = FlameParams.zeros(flame.model, 3)
    params.jaw_pose[2, 0] = 0.2
    matted = np.full((64, 64, 3), 255, np.uint8)
    matted[16:48, 16:48] = 120
    return flame, comp, ring, params, matted


def run_cap4d(cap4d_setup, out: Path, check=None, executor=None, logs=None):
    flame, comp, ring, params, matted = cap4d_setup
    gen = CAP4DGenerator(None, CAP4DSettings(seed=4, quality="tiny", device="cpu"), components=comp)
    return gen.generate(ring, flame, params, FRAMES, FlameParams.zeros(flame.model, 1), _camera(64), matted,
                        out / "views", out / "state", check=check, log=(logs if logs is not None else []).append,
                        executor=executor)


def read_views(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "views").rglob("*.png"))}


def test_cancel_between_steps_resumes_at_the_last_step(cap4d_setup, tmp_path):
    run_cap4d(cap4d_setup, tmp_path / "ref")
    expected = read_views(tmp_path / "ref")
    assert len(expected) == 12
    calls = []

    def check():  # before each group batch: 2 in step 0, then the first of step 1 cancels
        calls.append(1)
        if len(calls) == 3:
            raise Cancelled("test cancel")

    with pytest.raises(Cancelled):
        run_cap4d(cap4d_setup, tmp_path / "run", check=check)
    state = tmp_path / "run" / "state"
    assert (state / "steps.safetensors").is_file() and not (state / "latents.safetensors").exists()
    calls.clear()
    counted = []
    run_cap4d(cap4d_setup, tmp_path / "run", check=lambda: counted.append(1))
    assert len(counted) == 2 + 4  # only step 1's two batches were sampled again, then 4 views decoded
    assert read_views(tmp_path / "run") == expected
    assert not (state / "steps.safetensors").exists() and (state / "latents.safetensors").is_file()
