"""SPZ export read back by an independent reader (spz-js, web/node_modules), and the PLY axes option."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from backend.avatar.bundle import write_bundle
from backend.avatar.export import main as export_main, world_gaussians_np
from backend.engines.exports import to_ply_axes
from backend.engines.spz import spz_bytes
from backend.errors import MVP4DError
from tests.backend.avatar_helpers import toy_bundle

REPO = Path(__file__).resolve().parents[2]
HAVE_SPZ_JS = shutil.which("node") is not None and (REPO / "web" / "node_modules" / "spz-js").is_dir()


@pytest.fixture(scope="module")
def bundle():
    return toy_bundle(num_frames=2, num_gaussians=2000, sh_degree=2, detail=False)


def test_header_and_size(bundle):
    w = world_gaussians_np(bundle, 1)
    data = spz_bytes(w["means"], w["quats"], w["log_scales"], w["opacity_logit"], w["sh"])
    raw = gzip.decompress(data)
    magic, version, n, degree, frac, flags, _ = struct.unpack_from("<IIIBBBB", raw)
    assert (magic, version, n, degree, frac, flags) == (0x5053474E, 2, 2000, 2, 12, 0)
    assert len(raw) == 16 + n * (9 + 1 + 3 + 3 + 3 + 8 * 3)
    with pytest.raises(MVP4DError):  # outside the 24-bit fixed-point range
        spz_bytes(w["means"] + 5000.0, w["quats"], w["log_scales"], w["opacity_logit"], w["sh"])


@pytest.mark.skipif(not HAVE_SPZ_JS, reason="spz-js is installed by `make test` (web/node_modules)")
def test_spz_round_trips_through_an_independent_reader(tmp_path, bundle):
    src = write_bundle(tmp_path / "avatar.safetensors", bundle)
    out = tmp_path / "avatar.spz"
    assert export_main([str(src), "--format", "spz", "--out", str(out), "--frame", "1"]) == 0
    js = tmp_path / "read.json"
    subprocess.run(["node", str(REPO / "tools" / "read_spz.mjs"), str(out), str(js)], check=True, timeout=120)
    g = json.loads(js.read_text())
    w = world_gaussians_np(bundle, 1)
    n = len(w["means"])
    assert g["numPoints"] == n and g["shDegree"] == 2
    pos = np.array(g["positions"]).reshape(n, 3)
    assert np.abs(pos - w["means"]).max() <= 1e-3  # within 1 mm (the format's step is 0.24 mm)
    assert np.abs(pos - w["means"]).max() <= 0.5 / 4096 + 1e-6
    np.testing.assert_allclose(np.array(g["scales"]).reshape(n, 3), w["log_scales"], atol=0.5 / 16 + 1e-6)
    rot = np.array(g["rotations"]).reshape(n, 4)  # xyzw
    want = np.concatenate([w["quats"][:, 1:], w["quats"][:, :1]], 1)
    want = want / np.linalg.norm(want, axis=1, keepdims=True) * np.sign(want[:, 3:4] + 1e-12)
    dots = np.abs(np.sum(rot * want, 1))  # same rotation up to 8-bit steps (w is implied: coarse when small)
    assert np.median(dots) > 0.9999 and np.percentile(dots, 1) > 0.99
    alpha = 1 / (1 + np.exp(-w["opacity_logit"]))
    logits = np.array([np.nan if a is None else a for a in g["alphas"]])  # byte 0/255: an infinite logit
    ok = np.isfinite(logits)
    assert ok.mean() > 0.9
    np.testing.assert_allclose(1 / (1 + np.exp(-logits[ok])), alpha[ok], atol=1.5 / 255)
    np.testing.assert_allclose(np.array(g["colors"]).reshape(n, 3), w["sh"][:, 0], atol=0.5 / (0.15 * 255) + 1e-6)
    sh = np.array(g["sh"]).reshape(n, 8, 3)
    np.testing.assert_allclose(sh[:, :3], np.clip(w["sh"][:, 1:4], -1, 127 / 128), atol=4.5 / 128)
    np.testing.assert_allclose(sh[:, 3:], np.clip(w["sh"][:, 4:], -1, 127 / 128), atol=8.5 / 128)
    assert out.stat().st_size < 0.25 * (n * 62 * 4)  # far smaller than the float PLY


def test_ply_axes_y_down_is_a_half_turn_about_x(bundle):
    w = world_gaussians_np(bundle, 0)
    d = to_ply_axes(w, "y-down")
    np.testing.assert_allclose(d["means"], w["means"] * [1, -1, -1], atol=1e-7)
    from backend.avatar.binding_np import quat_multiply_np

    # rotating every Gaussian by the same half turn: its axes map as the positions do
    axis = np.array([0.0, 0.3, 0.4, 0.0])
    axis[0] = 0.0
    q, qd = w["quats"][:5].astype(np.float64), d["quats"][:5].astype(np.float64)
    rotated = quat_multiply_np(quat_multiply_np(q, np.broadcast_to(axis, q.shape)), q * [1, -1, -1, -1])
    rotated_d = quat_multiply_np(quat_multiply_np(qd, np.broadcast_to(axis, q.shape)), qd * [1, -1, -1, -1])
    np.testing.assert_allclose(rotated_d[:, 1:], rotated[:, 1:] * [1, -1, -1], atol=1e-5)
    assert to_ply_axes(w, "y-up") is w
    with pytest.raises(MVP4DError):
        to_ply_axes(w, "z-up")
