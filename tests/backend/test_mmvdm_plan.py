"""The MMVDM inference plan (backend/mmvdm/plan.py): paper §4 "Sampling", S2.3, Fig. S10/S11."""

from __future__ import annotations

import json

import pytest

from backend.cameras import CameraRing, orbit_camera, ring_preset
from backend.errors import MVP4DError
from backend.mmvdm.plan import Pass, build_plan, check_plan, describe_plan, main, plan_from_json, plan_to_json


@pytest.fixture(scope="module")
def rings():
    return {name: ring_preset(name) for name in ("120", "360", "tiny")}


def _coverage(plan, num_views, num_frames):
    seen = {}
    for p in plan:
        for v in p.views:
            for f in range(*p.frames):
                seen[(v, f)] = seen.get((v, f), 0) + 1
    assert set(seen) == {(v, f) for v in range(num_views) for f in range(num_frames)}
    assert set(seen.values()) == {1}  # every view gets every frame exactly once


def _assert_dependencies(plan):
    """Every input of a pass (reference views over its window, its own context frames) comes from a
    pass that runs earlier and is listed (transitively) in depends_on; reference views come from a
    direct dependency covering the same window (whose latents the generator reads)."""
    index = {p.id: i for i, p in enumerate(plan)}
    by_id = {p.id: p for p in plan}
    producer, closure = {}, {}
    for p in plan:
        for v in p.views:
            for f in range(*p.frames):
                producer[(v, f)] = p.id
    for i, p in enumerate(plan):
        assert all(index[d] < i for d in p.depends_on)
        closure[p.id] = set(p.depends_on).union(*[closure[d] for d in p.depends_on])
        needs = {producer[(v, f)] for v in p.reference_views for f in range(*p.window)}
        needs |= {producer[(v, f)] for v in p.views for f in p.context_frames}
        assert needs <= closure[p.id], (p.id, needs, p.depends_on)
        for v in p.reference_views:
            assert any(v in by_id[d].views and by_id[d].window == p.window for d in p.depends_on)


@pytest.mark.parametrize("preset, others, clusters", [("120", 24, 6), ("360", 40, 10)])
def test_paper_presets_at_89_frames(rings, preset, others, clusters):
    ring = rings[preset]
    plan = build_plan(ring, 89)
    check_plan(plan, len(ring), 89)
    _coverage(plan, len(ring), 89)
    _assert_dependencies(plan)
    keys = [p for p in plan if p.mode in (1, 3)]
    fills = [p for p in plan if p.mode in (2, 4)]
    # 8 key views jointly, 100 steps; then the others in clusters of 4 with their 4 nearest keys, 50 steps
    assert [p.mode for p in keys] == [1, 3] and all(len(p.views) == 8 and p.steps == 100 for p in keys)
    assert sorted(keys[0].views) == sorted(ring.key_indices)
    assert len(fills) == 2 * clusters and all(p.steps == 50 for p in fills)
    assert sum(len(p.views) for p in fills if p.mode == 2) == others
    assert all(len(p.views) == 4 and len(p.reference_views) == 4 for p in fills)
    assert all(set(p.reference_views) <= set(ring.key_indices) for p in fills)
    # window 0: 49 frames = 13 latent frames, no context; extension: last 9 frames + 40 new ones
    for p in plan:
        if p.window_index == 0:
            assert p.frames == (0, 49) and p.context_frames == [] and p.num_latent_frames == 13
        else:
            assert p.frames == (49, 89) and p.context_frames == list(range(40, 49))
            assert p.num_latent_frames == 13 and p.num_context_latent_frames == 3
    # execution order (Fig. S11): keys, clusters (mode 2), key extension (mode 3), cluster extensions (mode 4)
    assert [p.mode for p in plan] == [1] + [2] * clusters + [3] + [4] * clusters
    mode4 = [p for p in plan if p.mode == 4]
    assert all(p.depends_on[0] == "w1-key" and p.depends_on[1] == p.id.replace("w1", "w0") for p in mode4)


def test_49_frames_has_no_extension_and_shorter(rings):
    ring = rings["120"]
    plan = build_plan(ring, 49)
    assert {p.mode for p in plan} == {1, 2} and all(p.window == (0, 49) for p in plan)
    _coverage(plan, len(ring), 49)
    short = build_plan(ring, 17)
    assert all(p.frames == (0, 17) and p.num_latent_frames == 5 for p in short)
    single = build_plan(ring, 1)
    assert all(p.frames == (0, 1) and p.num_latent_frames == 1 for p in single)


@pytest.mark.parametrize("frames, windows", [(129, [(0, 49), (40, 89), (80, 129)]), (57, [(0, 49), (40, 57)]),
                                             (93, [(0, 49), (40, 89), (80, 93)])])
def test_sliding_window_extension(rings, frames, windows):
    ring = rings["tiny"]
    plan = build_plan(ring, frames)
    check_plan(plan, len(ring), frames)
    _coverage(plan, len(ring), frames)
    _assert_dependencies(plan)
    assert sorted({p.window for p in plan}) == windows
    for p in plan:
        assert (p.num_window_frames - 1) % 4 == 0  # every window is 1 + 4k frames
        if p.window_index:
            assert len(p.context_frames) == 9 and p.context_frames[-1] == p.frames[0] - 1
            assert p.mode in (3, 4)


@pytest.mark.parametrize("frames", [0, 2, 48, 50, 88, 90, -3, 8])
def test_frame_counts_not_1_plus_4k_are_bad_input(rings, frames):
    with pytest.raises(MVP4DError) as e:
        build_plan(rings["tiny"], frames)
    assert e.value.code == "BAD_INPUT"


def test_inconsistent_rings_are_bad_input():
    cams = [orbit_camera(30 * i, 0, name=f"c{i}", resolution=64, focal_px=200) for i in range(4)]
    too_many_keys = CameraRing(cameras=cams, key_indices=list(range(8)), clusters=[], cluster_keys=[])
    for ring in (
        too_many_keys,
        CameraRing(cameras=cams, key_indices=[], clusters=[[0, 1, 2, 3]], cluster_keys=[[0]]),
        CameraRing(cameras=cams, key_indices=[0, 1], clusters=[[2]], cluster_keys=[[0]]),  # view 3 nowhere
        CameraRing(cameras=cams, key_indices=[0, 1], clusters=[[1, 2, 3]], cluster_keys=[[0]]),  # key in a cluster
        CameraRing(cameras=cams, key_indices=[0, 1], clusters=[[2, 3]], cluster_keys=[[2]]),  # non-key reference
        CameraRing(cameras=cams, key_indices=[0, 1], clusters=[[2, 3]], cluster_keys=[]),
        CameraRing(cameras=cams, key_indices=[0, 0], clusters=[[1, 2, 3]], cluster_keys=[[0]]),
    ):
        with pytest.raises(MVP4DError) as e:
            build_plan(ring, 49)
        assert e.value.code == "BAD_INPUT"
    with pytest.raises(MVP4DError) as e:
        build_plan(CameraRing.from_cameras(cams, num_keys=2), 49, steps_key=0)
    assert e.value.code == "BAD_INPUT"


def test_small_ring_and_key_only_ring():
    cams = [orbit_camera(a, 0, name=f"c{i}", resolution=64, focal_px=200, key=i < 2)
            for i, a in enumerate((-20, 20, -40, 40))]
    ring = CameraRing.from_cameras(cams)
    plan = build_plan(ring, 9)
    assert [(p.id, p.mode, p.views, p.reference_views) for p in plan] == [
        ("w0-key", 1, [0, 1], []), ("w0-c00", 2, [2, 3], ring.cluster_keys[0])]
    keys_only = CameraRing(cameras=cams, key_indices=[0, 1, 2, 3], clusters=[], cluster_keys=[])
    plan = build_plan(keys_only, 13, window_frames=9, context_frames=5)
    assert [(p.id, p.mode, p.frames, p.context_frames) for p in plan] == [
        ("w0-key", 1, (0, 9), []), ("w1-key", 3, (9, 13), [4, 5, 6, 7, 8])]


def test_check_plan_catches_broken_plans(rings):
    ring = rings["tiny"]
    plan = build_plan(ring, 89)
    broken = [Pass(**{**p.__dict__}) for p in plan]
    broken[1].depends_on = []  # the cluster would read key views nobody produced for it
    with pytest.raises(MVP4DError, match="needs view"):
        check_plan(broken, len(ring), 89)
    with pytest.raises(MVP4DError, match="never generated"):
        check_plan(plan[:-1], len(ring), 89)
    with pytest.raises(MVP4DError, match="does not run before"):
        check_plan(list(reversed(plan)), len(ring), 89)


def test_json_and_table(rings, capsys):
    ring = rings["360"]
    plan = build_plan(ring, 89)
    d = plan_to_json(plan)
    assert d["num_passes"] == 22 and d["num_views"] == 48 and d["num_frames"] == 89 and d["num_windows"] == 2
    assert d["total_steps"] == 2 * 100 + 20 * 50
    assert plan_from_json(json.loads(json.dumps(d))) == plan
    table = describe_plan(plan, ring)
    assert "w1-c09" in table and "22 passes" in table
    assert main(["--preset", "120", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_passes"] == 14 and out["preset"] == "120" and len(out["views"]) == 32
    assert main(["--preset", "tiny", "--frames", "57"]) == 0
    assert "w1-c00" in capsys.readouterr().out
    assert main(["--preset", "preview", "--frames", "50"]) == 1
    assert "BAD_INPUT" in capsys.readouterr().err
