"""CAP4D MMDM UNet: the shared golden fixture, and a second fixture from an independent reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backend.cap4d.attention import ViewAttnProcessor
from backend.cap4d.fixture import TOLERANCE, build_unet, draw_weights, evaluate_fixture, read_fixture, write_fixture
from backend.cap4d.weights_cli import main as weights_main

from .cap4d_reference import ReferenceMMDM, ldm_shapes

GOLDEN = Path(__file__).parent.parent / "data" / "cap4d" / "tiny_golden.safetensors"

#: a configuration unlike the shared one: 3 levels, 1 res block, 8-channel heads, attention at 1 and 2
#: (per view at the first, joint at the second), 11 conditioning channels, batch 2 × 3 views at 8²
OTHER = dict(image_size=8, time_steps=3, temporal_mode="3d", in_channels=4, out_channels=4, model_channels=32,
             condition_channels=11, attention_resolutions=[2, 1], num_res_blocks=1, channel_mult=[1, 2, 2],
             num_head_channels=8, use_spatial_transformer=True, use_linear_in_transformer=True,
             transformer_depth=1, context_dim=1024, use_checkpoint=False, legacy=False)
RULE = {"order": "sorted keys", "seed": 77, "large_std": 0.4, "large_if_key_contains": [".attn1.", ".proj_"],
        "std": 0.1}


def _run_cli(path: Path, capsys) -> tuple[int, dict]:
    rc = weights_main(["fixture", str(path)])
    return rc, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_shared_golden_fixture_reproduces(capsys):
    rc, out = _run_cli(GOLDEN, capsys)
    assert rc == 0 and out["passed"] and out["max_abs_error"] <= 1e-4, out


def test_reference_implementation_matches_upstream_output():
    """The plain-torch reference reproduces upstream's own output, so it can vouch for other configurations."""
    meta, t = read_fixture(GOLDEN)
    assert ldm_shapes(meta["config"]) == meta["shapes"]
    ref = ReferenceMMDM(meta["config"], draw_weights(meta["shapes"], meta["weight_rule"]))
    out = ref(t["x"], t["t"], t["z_input"], t["ref_mask"], t["pos_enc"])
    assert float((out - t["out"]).abs().max()) <= 1e-4


def _other_fixture(tmp_path: Path) -> Path:
    shapes = ldm_shapes(OTHER)
    g = torch.Generator().manual_seed(5)
    b, v, s = 2, OTHER["time_steps"], OTHER["image_size"]
    inputs = {"x": torch.randn(b, v, 4, s, s, generator=g), "z_input": torch.randn(b, v, 4, s, s, generator=g),
              "pos_enc": torch.randn(b, v, s, s, OTHER["condition_channels"], generator=g),
              "t": torch.randint(0, 1000, (b, v), generator=g),
              "ref_mask": torch.tensor([[1, 0, 0], [0, 1, 1]], dtype=torch.uint8).reshape(b, v, 1, 1, 1)}
    ref = ReferenceMMDM(OTHER, draw_weights(shapes, RULE))
    out = ref(inputs["x"], inputs["t"], inputs["z_input"], inputs["ref_mask"], inputs["pos_enc"])
    return write_fixture(tmp_path / "other.safetensors", OTHER, shapes, RULE, {**inputs, "out": out})


def test_second_fixture_other_configuration(tmp_path, capsys):
    path = _other_fixture(tmp_path)
    rc, out = _run_cli(path, capsys)
    assert rc == 0 and out["passed"], out
    assert (out["batch"], out["views"]) == (2, 3)

    # the check can fail: a slightly wrong expected output is rejected with exit 1
    meta, t = read_fixture(path)
    t["out"] = t["out"] + 1e-3
    bad = write_fixture(tmp_path / "bad.safetensors", meta["config"], meta["shapes"], meta["weight_rule"], t)
    rc, out = _run_cli(bad, capsys)
    assert rc == 1 and not out["passed"] and out["max_abs_error"] > 1e-4


def test_joint_view_attention_is_what_the_fixture_needs():
    """With per-image attention everywhere the fixture check fails: it detects the joint levels."""
    meta, t = read_fixture(GOLDEN)
    unet = build_unet(meta["config"], draw_weights(meta["shapes"], meta["weight_rule"]))
    assert unet.joint_view_module_prefixes() == ["down_blocks.1.", "down_blocks.2.", "up_blocks.2.", "up_blocks.1.",
                                                 "mid_block."]
    unet.set_attn_processor({k: ViewAttnProcessor(joint=False) for k in unet.attn_processors})
    with torch.no_grad():
        out = unet(t["x"], t["t"], t["z_input"], t["ref_mask"], t["pos_enc"])
    assert float((out - t["out"]).abs().max()) > 5 * TOLERANCE


def test_views_are_exchangeable_and_batch_items_independent():
    meta, t = read_fixture(GOLDEN)
    unet = build_unet(meta["config"], draw_weights(meta["shapes"], meta["weight_rule"]))
    perm = torch.tensor([2, 0, 3, 1])
    args = [t["x"], t["t"], t["z_input"], t["ref_mask"], t["pos_enc"]]
    with torch.no_grad():
        base = unet(*args)
        permuted = unet(*[a[:, perm] for a in args])
        doubled = unet(*[torch.cat([a, a[:, perm]]) for a in args])
    assert torch.allclose(permuted, base[:, perm], atol=1e-5)
    assert torch.allclose(doubled[0], base[0], atol=1e-5) and torch.allclose(doubled[1], base[0, perm], atol=1e-5)


def test_fixture_file_errors(tmp_path):
    from backend.errors import MVP4DError

    with pytest.raises(MVP4DError) as e:
        evaluate_fixture(tmp_path / "nope.safetensors")
    assert e.value.code == "BAD_INPUT"
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(MVP4DError) as e:
        evaluate_fixture(tmp_path / "junk.safetensors")
    assert e.value.code == "WEIGHTS_INVALID"
