"""§5 attention scale: the measured mode keeps attention entropy constant; it is the default for new weights."""

from __future__ import annotations

import math

import pytest
import torch

from backend.mmvdm.attention import DEFAULT_ATTENTION_SCALE_MODE, LEGACY_ATTENTION_SCALE_MODE
from backend.mmvdm.attention_entropy import EIGHT_VIEW_TOKEN_COUNT, attention_entropy, measure
from backend.mmvdm.configs import mmvdm_2b_config, tiny_config
from backend.mmvdm.transformer import MMVDMTransformer


def test_entropy_of_uniform_and_one_hot_attention():

    q = torch.zeros(3, 8)
    k = torch.randn(50, 8)
    assert attention_entropy(q, k, 1.0) == pytest.approx(math.log(50), rel=1e-9)
    q = torch.ones(2, 8)
    k = torch.cat([torch.ones(1, 8) * 100, torch.zeros(9, 8)])
    assert attention_entropy(q, k, 1.0) < 1e-6


def test_entropy_mode_holds_attention_entropy_from_13x32x32_to_107520_tokens_and_printed_does_not():
    r = measure(qk_gain=1.6, queries=48)
    assert r["n_train"] == 13 * 32 * 32 and r["n_infer"] == EIGHT_VIEW_TOKEN_COUNT == 107_520
    assert r["logit_std"] > 1.5  # sharper than uniform noise: the regime where the scale matters
    m = r["modes"]
    assert abs(m["entropy"]["rel_change"]) < 0.05
    assert abs(m["printed"]["rel_change"]) > 0.05
    assert m["printed"]["rel_change"] > m["none"]["rel_change"] > m["entropy"]["rel_change"]  # printed flattens it
    # the raw entropy grows with log N under every mode (the extra tokens' share): reported, not the criterion
    assert all(x["raw_change"] > 0.15 for x in m.values())


def test_new_weights_default_to_entropy_and_old_configs_keep_printed():
    assert DEFAULT_ATTENTION_SCALE_MODE == "entropy" and LEGACY_ATTENTION_SCALE_MODE == "printed"
    assert mmvdm_2b_config()["attention_scale_mode"] == "entropy"
    cfg = tiny_config(conditioning_channels=3)
    assert MMVDMTransformer.from_config(cfg).config.attention_scale_mode == "entropy"
    old = {k: v for k, v in cfg.items() if k != "attention_scale_mode"}  # written before the key existed
    model = MMVDMTransformer.from_config(old)
    assert model.config.attention_scale_mode == "printed"
    assert model.attention_scale(EIGHT_VIEW_TOKEN_COUNT) < 1.0
    chosen = MMVDMTransformer.from_config(dict(cfg, attention_scale_mode="printed"))  # still selectable
    assert chosen.attention_scale(EIGHT_VIEW_TOKEN_COUNT) == model.attention_scale(EIGHT_VIEW_TOKEN_COUNT)
