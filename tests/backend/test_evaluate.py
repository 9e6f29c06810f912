"""``python -m backend evaluate``: an avatar against a ground-truth folder, with PSNR, SSIM and JOD."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backend.avatar.bundle import write_bundle
from backend.avatar.fit_export_stages import render_bundle
from backend.cameras import orbit_camera
from backend.errors import MVP4DError
from backend.evaluation import jod as jod_module
from backend.evaluation.evaluate import evaluate_bundle, main
from backend.evaluation.groundtruth import load_ground_truth, write_ground_truth
from backend.evaluation.metrics import MetricSet

from .avatar_helpers import toy_bundle

RES = 48
FRAMES = 5


@pytest.fixture(scope="module")
def avatar(tmp_path_factory):
    bundle = toy_bundle(num_frames=FRAMES, num_gaussians=1500, sh_degree=1, detail=False)
    path = tmp_path_factory.mktemp("avatar") / "avatar.safetensors"
    write_bundle(path, bundle)
    center = bundle.vertices[0].mean(0)
    cams = [orbit_camera(az, 5, center=center, distance=0.6, focal_px=1.6 * RES, resolution=RES, name=f"gt{i}")
            for i, az in enumerate((-25, 30))]
    return bundle, path, cams


def _renders(bundle, cams, frames, shift: int = 0) -> np.ndarray:
    return np.stack([np.stack([np.roll(render_bundle(bundle, c, f), shift, axis=1) for f in frames]) for c in cams])


def test_jod_of_a_render_against_itself_is_10_and_falls_when_shifted(avatar):
    bundle, _, cams = avatar
    video = _renders(bundle, cams[:1], range(FRAMES))[0]
    assert jod_module.jod(video, video, 24.0) == pytest.approx(jod_module.JOD_MAX, abs=1e-4)
    shifted = _renders(bundle, cams[:1], range(FRAMES), shift=2)[0]
    assert jod_module.jod(shifted, video, 24.0) < 9.0


def test_evaluate_a_tiny_avatar_against_itself_and_a_shifted_truth(avatar, tmp_path):
    bundle, _, cams = avatar
    frames = [0, 2, 4]
    same = write_ground_truth(tmp_path / "same", cams, _renders(bundle, cams, frames), frames, fps=12.0)
    rep = evaluate_bundle(bundle, load_ground_truth(same, bundle.num_frames), MetricSet())
    assert [r["view"] for r in rep["views"]] == ["gt0", "gt1"] and rep["images"] == 6
    o = rep["overall"]
    assert o["psnr"] == 100.0 and o["ssim"] == pytest.approx(1.0) and o["jod"] == pytest.approx(10.0, abs=1e-4)
    assert o["lpips"] is None and o["csim"] is None and "csim" in rep["missing"] and "lpips" in rep["missing"]
    shifted = write_ground_truth(tmp_path / "shifted", cams, _renders(bundle, cams, frames, shift=3), frames)
    rep2 = evaluate_bundle(bundle, load_ground_truth(shifted), MetricSet())
    for r in rep2["views"]:
        assert r["psnr"] < 30 and r["ssim"] < 0.95 and r["jod"] < 9.0
    # held-out frames map to bundle frames: GT of frames 1, 3 against the render of 0, 2 is worse than matched
    wrong = write_ground_truth(tmp_path / "wrong", cams, _renders(bundle, cams, [1, 3]), [0, 2])
    right = write_ground_truth(tmp_path / "right", cams, _renders(bundle, cams, [1, 3]), [1, 3])
    no_jod = MetricSet(jod=False)
    assert evaluate_bundle(bundle, load_ground_truth(wrong), no_jod)["overall"]["psnr"] < \
        evaluate_bundle(bundle, load_ground_truth(right), no_jod)["overall"]["psnr"]


def test_jod_unavailable_is_reported_never_zero(avatar, tmp_path, monkeypatch):
    bundle, _, cams = avatar
    gt = write_ground_truth(tmp_path / "gt", cams[:1], _renders(bundle, cams[:1], [0]), [0])
    monkeypatch.setattr(jod_module, "_STATE", {"module": None, "reason": "cvvdp is not installed"})
    rep = evaluate_bundle(bundle, load_ground_truth(gt), MetricSet())
    assert rep["overall"]["jod"] is None and rep["views"][0]["jod"] is None
    assert rep["missing"]["jod"] == "cvvdp is not installed"


def test_cli_json_table_and_bad_input(avatar, tmp_path, capsys):
    bundle, path, cams = avatar
    gt = write_ground_truth(tmp_path / "gt", cams[:1], _renders(bundle, cams[:1], [0, 1]), [0, 1])
    assert main([str(path), "--against", str(gt), "--no-jod"]) == 0
    out = capsys.readouterr().out
    assert "overall" in out and "JOD missing: skipped" in out and "CSIM missing" in out
    report = tmp_path / "report.json"
    assert main([str(path), "--against", str(gt), "--json", "--no-jod", "--out", str(report)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["overall"]["psnr"] == 100.0 and json.loads(report.read_text())["views"][0]["view"] == "gt0"
    assert main([str(path), "--against", str(gt), "--out", str(report)]) != 0  # never replaces a file
    (gt / "gt0" / "0001.png").write_bytes((gt / "gt0" / "0001.png").read_bytes()[:40])
    assert main([str(path), "--against", str(gt), "--no-jod"]) != 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["type"] == "error" and last["code"] == "BAD_INPUT" and "0001.png" in last["message"]
    with pytest.raises(MVP4DError, match="bundle frame"):
        load_ground_truth(gt, num_bundle_frames=1)
