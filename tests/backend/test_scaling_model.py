"""The scaling model (backend/executors/scaling.py): list scheduling over the real plan graph."""

from __future__ import annotations

import pytest

from backend.executors.scaling import cap4d_scaling, list_schedule, markdown, mmvdm_scaling, scaling_report


def test_list_schedule_respects_dependencies_and_finds_the_critical_path():
    # a -> (b, c, d); b -> e. On 2 workers: a [0,2], b [2,5] and c [2,4], then d [4,5] and e [5,6]
    dur = {"a": 2.0, "b": 3.0, "c": 2.0, "d": 1.0, "e": 1.0}
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["a"], "e": ["b"]}
    order = list(dur)
    span1, _ = list_schedule(dur, deps, order, 1)
    span2, sched = list_schedule(dur, deps, order, 2)
    span9, _ = list_schedule(dur, deps, order, 9)
    assert span1 == sum(dur.values()) and span2 == 6.0 and span9 == 6.0  # 6 = a + b + e
    for u, (_, start, _end) in sched.items():
        assert all(sched[d][2] <= start for d in deps[u])
    assert sched["b"][1] == 2.0  # the longest remaining path goes first


def test_mmvdm_120_plan_scales_to_its_critical_path():
    r = mmvdm_scaling("120", step_seconds=1.0)
    assert r["passes"] == 14 and r["steps"] == 800 and r["work_s"] == pytest.approx(800, rel=1e-6)
    walls = [row["wall_s"] for row in r["rows"]]
    assert walls[0] == pytest.approx(800, abs=0.1) and walls == sorted(walls, reverse=True)
    assert all(row["wall_s"] >= row["bound_s"] - 0.1 for row in r["rows"])
    assert r["critical_path_s"] == pytest.approx(100 + 100 + 50, abs=0.1)  # w0-key, w1-key, a w1 cluster
    assert walls[-1] == pytest.approx(r["critical_path_s"], abs=0.1)  # 8 GPUs reach it


def test_cap4d_groups_split_per_step_and_the_report_renders():
    r = cap4d_scaling("medium", 32, group_seconds=1.0)
    assert r["groups_per_step"] == 60 and r["rows"][0]["wall_s"] == 50 * 60
    assert r["rows"][-1]["wall_s"] == 50 * 8  # ceil(60 / 8) = 8 rounds per step
    text = markdown(scaling_report())
    assert text.count("| MMVDM 120°") == 4 and text.count("| MMVDM 360°") == 4 and "H200" in text
