"""The FLAME rig: structure, and its evaluation equals the backend's FLAME (``backend.flame.lbs``)."""

from __future__ import annotations

from importlib import import_module

import bpy
import numpy as np
import pytest

from .conftest import ADDON, REPO, backend_run

_FORWARD = """
import sys, numpy as np, torch
from backend.flame import Flame, FlameParams, load_flame
flame = Flame(load_flame(sys.argv[1]))
p = FlameParams.load_npz(sys.argv[2], flame.num_shape, flame.num_expr)
with torch.no_grad():
    np.save(sys.argv[3], flame(p).vertices.double().numpy())
"""


def _params(rng, E, T=3):
    return {"expr": rng.normal(scale=0.6, size=(T, E)), "jaw_pose": rng.normal(scale=0.15, size=(T, 3)),
            "neck_pose": rng.normal(scale=0.15, size=(T, 3)), "eye_pose": rng.normal(scale=0.15, size=(T, 6)),
            "global_rot": rng.normal(scale=0.2, size=(T, 3)), "transl": rng.normal(scale=0.02, size=(T, 3))}


def _evaluate_rig(rig, params, t):
    rigmod = import_module(f"{ADDON}.blender.rig")
    import_module(f"{ADDON}.blender.rig_params").set_parameters(rig, {k: v[t] for k, v in params.items()})
    bpy.context.view_layer.update()
    return rigmod.evaluated_vertices_flame(rig, bpy.context.evaluated_depsgraph_get())


def test_add_rig_structure(scene):
    assert bpy.ops.mvp4d.add_rig(source="TOY") == {"FINISHED"}
    rig = scene.mvp4d.rig
    rigmod = import_module(f"{ADDON}.blender.rig")
    model = import_module(f"{ADDON}.blender.models").model_of_rig(rig)
    keys = rig.data.shape_keys.key_blocks
    assert len(keys) == 1 + model.num_expr  # the toy head has no pose correctives
    assert [k.name for k in keys[1:]] == model.expr_names()
    arm = rigmod.armature_of(rig)
    controls = [b.name for b in arm.data.collections["Controls"].bones]
    assert controls == ["root", "neck", "jaw", "eye_left", "eye_right"]
    assert not arm.data.collections["Mechanism"].is_visible
    # FLAME's chain: jaw under neck under root, through the hidden offset/deform bones
    assert arm.data.bones["jaw"].parent.name == "MCH-jaw" and arm.data.bones["MCH-jaw"].parent.name == "DEF-neck"
    assert [b.name for b in arm.data.bones if b.use_deform] == ["DEF-" + n for n in controls]
    for b in arm.data.bones:  # bone axes are FLAME axes: a bone's local rotation is FLAME's axis-angle
        np.testing.assert_allclose(np.array(b.matrix_local)[:3, :3], rigmod.FLAME_TO_BLENDER_ROTATION, atol=1e-6)
    assert sorted(g.name for g in rig.vertex_groups) == sorted("DEF-" + n for n in controls)
    mod = rig.modifiers["FLAME skinning"]
    assert mod.object == arm and not mod.use_deform_preserve_volume
    # Blender +z up: the head's top is +z, the face looks towards -y
    co = np.array([v.co for v in rig.data.vertices])
    assert co[:, 2].max() > 0.1 and co[:, 1].min() < -0.09


def test_rig_matches_backend_flame(scene, tmp_path):
    bpy.ops.mvp4d.add_rig(source="TOY")
    rig = scene.mvp4d.rig
    rng = np.random.default_rng(0)
    params = _params(rng, 12)
    np.savez(tmp_path / "seq.npz", **params)
    backend_run(_FORWARD, "toy", str(tmp_path / "seq.npz"), str(tmp_path / "v.npy"))
    ref = np.load(tmp_path / "v.npy")
    size = np.ptp(ref[0], axis=0).max()
    for t in range(3):
        err = np.abs(_evaluate_rig(rig, params, t) - ref[t]).max()
        assert err < 1e-5 * size, err


def test_pose_correctives_are_driven(scene, tmp_path):
    """A model with non-zero posedirs gets one driven shape key per column, matching the backend."""
    flame = import_module(f"{ADDON}.io.flame")
    models = import_module(f"{ADDON}.blender.models")
    rigmod = import_module(f"{ADDON}.blender.rig")
    src = np.load(models.SHIPPED_TOY)
    d = {k: src[k] for k in src.files}
    rng = np.random.default_rng(3)
    d["posedirs"] = (rng.normal(scale=0.002, size=d["posedirs"].shape)).astype(np.float32)
    d["model_id"] = np.array("toy:correctives")
    np.savez(tmp_path / "model.npz", **d)
    model = flame.load_flame_npz(tmp_path / "model.npz")
    rig = rigmod.build_rig(model, name="Corr", model_npz=str(tmp_path / "model.npz"))
    corr = [k for k in rig.data.shape_keys.key_blocks if k.name.startswith("pose_")]
    assert len(corr) == 36
    assert all(rig.data.shape_keys.animation_data.drivers.find(f'key_blocks["{k.name}"].value') for k in corr)
    # every driver is a "simple expression": it runs with Python auto-execution turned off
    drivers = list(rig.data.shape_keys.animation_data.drivers) + list(rig.parent.animation_data.drivers)
    assert len(drivers) > 36 and all(d.driver.is_simple_expression for d in drivers)
    # and each F-curve passes its driver's value through (Blender 5.x adds (0,0)-(1,1) Bezier keys that
    # bent values between 0 and 1: the small joint offsets were off by up to 8e-5 m)
    assert not any(len(d.keyframe_points) or len(d.modifiers) for d in drivers)
    params = _params(rng, model.num_expr, T=2)
    np.savez(tmp_path / "seq.npz", **params)
    backend_run(_FORWARD, str(tmp_path / "model.npz"), str(tmp_path / "seq.npz"), str(tmp_path / "v.npy"))
    ref = np.load(tmp_path / "v.npy")
    size = np.ptp(ref[0], axis=0).max()
    for t in range(2):
        got = _evaluate_rig(rig, params, t)
        assert np.abs(got - ref[t]).max() < 1e-5 * size
        # and the correctives matter: without them the error is far larger
    flat = flame.flame_forward(model, None, *(params[k][1] for k in ("expr", "global_rot", "neck_pose", "jaw_pose",
                                                                     "eye_pose", "transl")))
    model.posedirs[:] = 0
    no_corr = flame.flame_forward(model, None, *(params[k][1] for k in ("expr", "global_rot", "neck_pose",
                                                                        "jaw_pose", "eye_pose", "transl")))
    assert np.abs(flat - no_corr).max() > 20 * np.abs(got - ref[1]).max()


def test_keyframes_round_trip(scene):
    bpy.ops.mvp4d.add_rig(source="TOY")
    rig = scene.mvp4d.rig
    rng = np.random.default_rng(5)
    seq = _params(rng, 12, T=7)
    rig_params = import_module(f"{ADDON}.blender.rig_params")
    rig_params.keyframe_sequence(rig, seq, 10)
    got = rig_params.read_sequence(rig, np.arange(10, 17, dtype=float))
    for k in seq:
        np.testing.assert_allclose(got[k], seq[k], atol=1e-5, err_msg=k)
    # the frame the rig shows is the keyed one
    scene.frame_set(12)
    np.testing.assert_allclose(rig_params.get_parameters(rig)["jaw_pose"], seq["jaw_pose"][2], atol=1e-5)


def test_import_sequence_operator(scene, tmp_path):
    bpy.ops.mvp4d.add_rig(source="TOY")
    rng = np.random.default_rng(2)
    seq = _params(rng, 12, T=9)
    np.savez(tmp_path / "drive.npz", **seq)
    assert bpy.ops.mvp4d.import_sequence(filepath=str(tmp_path / "drive.npz")) == {"FINISHED"}
    m = scene.mvp4d
    assert (m.frame_end - m.frame_start + 1, m.animation_source) == (9, "RIG")
    np.savez(tmp_path / "bad.npz", expr=np.zeros((4, 50)))
    with pytest.raises(RuntimeError, match="50 components"):
        bpy.ops.mvp4d.import_sequence(filepath=str(tmp_path / "bad.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(RuntimeError, match="not a readable"):
        bpy.ops.mvp4d.import_sequence(filepath=str(tmp_path / "junk.npz"))


def test_addon_never_imports_torch_or_backend_internals():
    import re

    bad = re.compile(r"^\s*(import|from)\s+(torch|diffusers|gsplat|backend)\b", re.M)
    for f in (REPO / "mvp4d_blender").rglob("*.py"):
        assert not bad.search(f.read_text()), f


def test_add_rig_from_a_flame_pickle(scene, tmp_path):
    """A FLAME .pkl (chumpy + scipy.sparse inside) goes through the backend once, then is cached."""
    from .conftest import prefs

    pkl = tmp_path / "flame_test.pkl"
    backend_run("import sys; from pathlib import Path; from tests.backend.test_flame_io import flame_arrays, "
                "write_flame_pickle; write_flame_pickle(Path(sys.argv[1]), flame_arrays())", str(pkl))
    prefs().flame_model = str(pkl)
    try:
        assert bpy.ops.mvp4d.add_rig(source="FLAME") == {"FINISHED"}
        rig = scene.mvp4d.rig
        keys = [k.name for k in rig.data.shape_keys.key_blocks]
        assert len([k for k in keys if k.startswith("exp")]) == 5 and len([k for k in keys if k.startswith("pose_")]) == 36
        assert rig["mvp4d_flame_source"] == str(pkl.resolve())
        (tmp_path / "broken.pkl").write_bytes(b"\x80\x02garbage")
        prefs().flame_model = str(tmp_path / "broken.pkl")
        with pytest.raises(RuntimeError, match="not a readable FLAME pickle"):
            bpy.ops.mvp4d.add_rig(source="FLAME")
    finally:
        prefs().flame_model = ""
