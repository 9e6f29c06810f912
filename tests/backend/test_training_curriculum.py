"""The training curriculum (backend/training/curriculum.py): the paper's Table 3 as the default config,
equal-probability resolutions, the mode rule (25 % mode 2 with several views, 25 % mode 3 with more than
three latent frames, both = mode 4) and 10 % conditioning dropout, over 10,000 draws."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from backend.errors import MVP4DError
from backend.training.curriculum import Curriculum, Resolution, load_curriculum

N = 10_000
TOL = 0.02  # 2 percentage points


def test_paper_config_is_table_3():
    c = load_curriculum("paper")
    assert [s.name for s in c.stages] == ["stage1", "stage2", "stage3"]
    assert [s.iterations for s in c.stages] == [30_000, 40_000, 5_000]
    assert [s.learning_rate for s in c.stages] == [1e-4, 5e-5, 2e-5]
    assert [s.batch_size for s in c.stages] == [64, 64, 64]
    assert [s.modes for s in c.stages] == [(1,), (1, 2, 3, 4), (1, 2, 3, 4)]
    assert [str(r) for r in c.stages[0].resolutions] == ["1x49x256", "2x29x256", "4x9x256", "12x1x256"]
    assert [str(r) for r in c.stages[1].resolutions] == ["1x49x512", "2x29x512", "4x9x512", "12x1x512", "8x29x512",
                                                         "16x9x512", "4x49x256", "8x29x256"]
    assert [str(r) for r in c.stages[2].resolutions] == ["1x49x512", "4x49x512", "16x1x512"]
    assert (c.conditioning_dropout, c.mode2_probability, c.mode3_probability, c.context_latent_frames) == (0.1, 0.25, 0.25, 3)
    assert c.total_iterations == 75_000
    assert c.stage_at(29_999)[0] == 0 and c.stage_at(30_000)[0] == 1 and c.stage_at(74_999)[0] == 2
    assert c.learning_rate(0) == 1e-4 and c.learning_rate(30_000) == 5e-5 and c.learning_rate(70_000) == 2e-5
    for name in ("small", "tiny"):
        assert load_curriculum(name).total_iterations > 0


def _draws(c: Curriculum, step: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [c.draw(rng, step, 1) for _ in range(N)]


def test_stage_2_statistics_over_10000_draws():
    c = load_curriculum("paper")
    stage = c.stages[1]
    draws = _draws(c, 30_000)
    res = Counter(str(d.resolution) for d in draws)
    for r in stage.resolutions:  # equal probability, 1/8 each
        assert abs(res[str(r)] / N - 1 / len(stage.resolutions)) < TOL, (r, res[str(r)])
    by_res: dict[str, Counter] = {}
    for d in draws:
        by_res.setdefault(str(d.resolution), Counter())[d.samples[0].mode] += 1
    # several views and > 3 latent frames: 9/16, 3/16, 3/16, 1/16 (a mode-probability test per resolution)
    for r in stage.resolutions:
        n = sum(by_res[str(r)].values())
        expect = c.mode_probabilities(stage, r)
        for m in (1, 2, 3, 4):
            assert abs(by_res[str(r)][m] / n - expect[m]) < 0.035, (r, m, by_res[str(r)][m] / n, expect[m])
    multi = [d for d in draws if d.resolution.views > 1 and d.resolution.latent_frames > 3]
    frac = Counter(d.samples[0].mode for d in multi)
    for m, p in {1: 9 / 16, 2: 3 / 16, 3: 3 / 16, 4: 1 / 16}.items():
        assert abs(frac[m] / len(multi) - p) < TOL
    # single view: never mode 2/4; 12 x 1 (one latent frame): never mode 3/4 — mode 2 at 25 %
    single = [d for d in draws if d.resolution.views == 1]
    assert all(d.samples[0].mode in (1, 3) for d in single)
    assert abs(sum(d.samples[0].mode == 3 for d in single) / len(single) - 0.25) < 0.03
    images = [d for d in draws if str(d.resolution) == "12x1x512"]
    assert all(d.samples[0].mode in (1, 2) for d in images)
    assert abs(sum(d.samples[0].mode == 2 for d in images) / len(images) - 0.25) < 0.035
    # half of the views as references, the first three latent frames as context
    for d in draws:
        s, r = d.samples[0], d.resolution
        assert s.reference_views == (r.views // 2 if s.mode in (2, 4) else 0)
        assert s.context_latent_frames == (3 if s.mode in (3, 4) else 0)
    # all views x frames of stage 2 pooled: P(mode 1) matches the exact mixture
    p1 = np.mean([c.mode_probabilities(stage, r)[1] for r in stage.resolutions])
    assert abs(sum(d.samples[0].mode == 1 for d in draws) / N - p1) < TOL
    # 10 % conditioning dropout
    assert abs(sum(d.samples[0].dropout for d in draws) / N - 0.10) < TOL


def test_stage_1_is_mode_1_only_with_equal_resolutions():
    c = load_curriculum("paper")
    draws = _draws(c, 0, seed=1)
    assert {d.samples[0].mode for d in draws} == {1}
    res = Counter(str(d.resolution) for d in draws)
    assert all(abs(n / N - 0.25) < TOL for n in res.values()) and len(res) == 4
    assert abs(sum(d.samples[0].dropout for d in draws) / N - 0.10) < TOL


def test_draws_are_reproducible_and_per_sample():
    c = load_curriculum("paper")
    a = c.draw(np.random.default_rng([5, 70_001]), 70_001, 16)
    b = c.draw(np.random.default_rng([5, 70_001]), 70_001, 16)
    assert a == b and a.stage_index == 2 and len(a.samples) == 16
    assert len({s.mode for s in c.draw(np.random.default_rng(3), 70_001, 256).samples}) > 1


def test_bad_configs_are_rejected():
    good = load_curriculum("tiny").to_json()
    for change, text in [
        ({"modes": [2, 3, 4]}, "includes 1"),
        ({"modes": [1, 2, 3]}, "mode 4"),
        ({"resolutions": ["2x8x32"]}, "1 + 4k"),
        ({"resolutions": ["2x9x40"]}, "multiple of 16"),
        ({"iterations": 0}, "iterations"),
        ({"learning_rate": -1}, "learning_rate"),
        ({"resolutions": ["2x9"]}, "VxFxD"),
    ]:
        d = {**good, "stages": [{**good["stages"][0], **change}]}
        with pytest.raises(MVP4DError) as e:
            Curriculum.from_json(d)
        assert text in e.value.message, (change, e.value.message)
    with pytest.raises(MVP4DError):
        load_curriculum("no-such-curriculum")
    assert Resolution.parse("4×49×512") == Resolution(4, 49, 512)
