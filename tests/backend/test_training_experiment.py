"""The CFG-ablation experiment (backend/training/experiment.py) end to end at toy size: data, VAE stand-in,
training, evaluation through the real plan for every CFG mode and V, results.json and the docs section.
(The real `smallest` preset takes ~14 min on 2 CPU cores; its table is in docs/experiments.md.)"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from backend.training.experiment import PRESETS, evaluation_ring, run_cfg_ablation, write_doc


def test_evaluation_rings_generate_v_views_per_pass():
    from backend.cameras import orbit_camera
    from backend.mmvdm.plan import build_plan, check_plan
    from backend.training.synthetic import EVAL_DIRECTIONS

    cams = [orbit_camera(a, e, resolution=64, focal_px=200, name=f"e{i}") for i, (a, e) in enumerate(EVAL_DIRECTIONS)]
    center = np.zeros(3)
    r8 = evaluation_ring(cams, center, 8)
    assert [p.mode for p in build_plan(r8, 9)] == [1] and len(build_plan(r8, 9)[0].views) == 8
    r4 = evaluation_ring(cams, center, 4)
    plan = build_plan(r4, 9)
    check_plan(plan, 8, 9)
    assert [p.mode for p in plan] == [1, 2, 2] and all(len(p.all_views) == 4 for p in plan)


def test_cfg_ablation_runs_end_to_end_at_toy_size(tmp_path):
    s = replace(PRESETS["smallest"], identities=1, heldout=1, image_size=48, size=32, multiview_video_views=5,
                multiview_video_frames=13, vae_steps=2, train_steps=4, batch_size=2, pool_batches=1, steps_key=2,
                steps_other=2, cfg_modes=("none", "multiview"), views=(4, 8), untrained_settings=(("multiview", 8),),
                num_workers=0, train_time_limit_min=None)
    doc = tmp_path / "experiments.md"
    doc.write_text("# Experiments\n\nintro\n\n## Another experiment\n\nkept\n")
    r = run_cfg_ablation(tmp_path / "exp", s, doc=doc)
    assert [(x["guidance"], x["views"]) for x in r["rows"]] == [("none", 4), ("multiview", 4), ("none", 8), ("multiview", 8)]
    assert [x["passes"] for x in r["rows"]] == [3, 3, 1, 1]
    assert all(np.isfinite(x["psnr"]) and 0 <= x["ssim"] <= 1 for x in r["rows"] + r["untrained"])
    assert r["model"]["trained_steps"] == r["model"]["planned_steps"] >= 4 and r["gains"][0]["views"] == 8
    assert json.loads((tmp_path / "exp" / "results.json").read_text())["rows"][0]["per_identity"]
    text = doc.read_text()
    assert "## Another experiment\n\nkept" in text and text.count("## CFG ablation (paper Table 7)") == 1
    assert "| multi-view CFG | 8 |" in text and "*untrained model*" in text
    write_doc(doc, r)  # re-running replaces the section
    assert doc.read_text().count("## CFG ablation (paper Table 7)") == 1
