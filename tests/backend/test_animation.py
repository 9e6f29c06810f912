"""Driving sequences: the built-in default moves the face; files are padded/cut to the job's length."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.animation import JAW_OPEN_RAD, builtin_animation, load_animation
from backend.errors import MVP4DError
from backend.flame import build_toy_head


@pytest.fixture(scope="module")
def toy():
    return build_toy_head()


def test_default_sequence_smiles_opens_jaw_and_blinks_in_order(toy):
    p = builtin_animation("default", toy, 89)
    names = toy.expression_names
    smile = p.expr[:, names.index("smile")]
    blink = p.expr[:, names.index("blink_left")]
    jaw = p.jaw_pose[:, 0]
    assert p.num_frames == 89
    assert smile.max() == pytest.approx(1.0, abs=0.02) and jaw.max() == pytest.approx(JAW_OPEN_RAD, abs=0.01)
    assert blink.max() == pytest.approx(1.0, abs=0.05)
    assert int(smile.argmax()) < int(jaw.argmax()) < int(blink.argmax())
    assert torch.allclose(p.expr[0], torch.zeros_like(p.expr[0])) and p.jaw_pose[-1].abs().max() < 1e-6
    assert torch.equal(p.expr[:, names.index("blink_left")], p.expr[:, names.index("blink_right")])


def test_shape_is_carried_and_neutral_is_still(toy):
    shape = torch.linspace(-1, 1, toy.num_shape)
    p = builtin_animation("neutral", toy, 5, shape=shape)
    assert torch.equal(p.shape, shape) and p.expr.abs().max() == 0


def test_model_without_names_warns_and_still_opens_jaw(toy):
    anonymous = toy.copy()
    anonymous.expression_names = None
    warnings = []
    p = builtin_animation("default", anonymous, 17, warn=warnings.append)
    assert warnings and "jaw" in warnings[0]
    assert p.jaw_pose[:, 0].max() > 0.2 and p.expr.abs().max() == 0


def test_unknown_builtin_is_bad_input(toy):
    with pytest.raises(MVP4DError) as ei:
        builtin_animation("dance", toy, 5)
    assert ei.value.code == "BAD_INPUT"


@pytest.mark.parametrize("frames_in_file, warned", [(9, False), (3, True), (20, True)])
def test_file_is_held_or_cut_to_job_length(tmp_path, toy, frames_in_file, warned):
    expr = np.random.default_rng(0).normal(size=(frames_in_file, 5)).astype(np.float32)
    np.savez(tmp_path / "a.npz", expr=expr, jaw_pose=np.zeros((frames_in_file, 3), np.float32))
    warnings = []
    p = load_animation(tmp_path / "a.npz", toy, 9, warn=warnings.append)
    assert p.num_frames == 9 and bool(warnings) == warned
    n = min(9, frames_in_file)
    assert np.allclose(p.expr[:n, :5].numpy(), expr[:n])
    assert np.allclose(p.expr[n:, :5].numpy(), expr[n - 1])  # held last frame
    assert p.expr[:, 5:].abs().max() == 0  # zero-padded components


def test_file_with_too_many_components_is_refused(tmp_path, toy):
    np.savez(tmp_path / "a.npz", expr=np.zeros((4, toy.num_expr + 3), np.float32))
    with pytest.raises(MVP4DError) as ei:
        load_animation(tmp_path / "a.npz", toy, 5)
    assert ei.value.code == "BAD_INPUT" and "expr" in ei.value.message
