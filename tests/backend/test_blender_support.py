"""backend/blender_support.py (the add-on's helper) and tests/backend_fixtures.py (the tests' stand-ins)."""

from __future__ import annotations

import numpy as np

from backend.avatar.bundle import read_bundle
from backend.blender_support import main
from backend.flame import build_toy_head, load_flame
from tests.backend_fixtures import main as fixtures_main


def test_export_flame_round_trips(tmp_path):
    assert main(["export-flame", "toy", str(tmp_path / "toy.npz")]) == 0
    a, b = build_toy_head(), load_flame(tmp_path / "toy.npz")
    assert b.model_id == a.model_id and b.expression_names == a.expression_names
    for k in ("v_template", "faces", "exprdirs", "posedirs", "J_regressor", "lbs_weights", "parents"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


def test_export_flame_reports_a_bad_file(tmp_path, capsys):
    (tmp_path / "bad.pkl").write_bytes(b"\x80\x04garbage")
    assert main(["export-flame", str(tmp_path / "bad.pkl"), str(tmp_path / "out.npz")]) == 1
    assert '"code": "FLAME_INVALID"' in capsys.readouterr().out


def test_toy_bundle_is_a_valid_bundle(tmp_path):
    assert fixtures_main(["toy-bundle", str(tmp_path / "b.safetensors"), "--frames", "5"]) == 0
    b = read_bundle(tmp_path / "b.safetensors")
    model = build_toy_head()
    assert b.num_gaussians == model.num_faces and b.num_frames == 5
    np.testing.assert_array_equal(b.faces, model.faces)
    assert b.metadata["flame_model_id"] == model.model_id


def test_flame_forward(tmp_path):
    np.savez(tmp_path / "p.npz", expr=np.zeros((2, 12)), jaw_pose=np.array([[0.0, 0, 0], [0.2, 0, 0]]))
    assert fixtures_main(["flame-forward", "toy", str(tmp_path / "p.npz"), str(tmp_path / "v.npy")]) == 0
    v = np.load(tmp_path / "v.npy")
    assert v.shape == (2, 4912, 3) and np.abs(v[0] - v[1]).max() > 1e-3
