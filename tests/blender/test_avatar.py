"""Importing an avatar: Geometry Nodes place the splats exactly like backend/avatar/binding.py."""

from __future__ import annotations

import json
from importlib import import_module

import bpy
import numpy as np
import pytest

from .conftest import ADDON, backend_run

_ORACLE = """
import json, sys, numpy as np, torch
from backend.avatar.binding import LocalGaussians, local_to_world
from backend.avatar.bundle import read_bundle
from backend.flame import Flame, FlameParams, load_flame
b = read_bundle(sys.argv[1])
frames = json.loads(sys.argv[3])
model = load_flame(sys.argv[4]).copy()
model.v_template = b.rest_vertices.astype(np.float32)  # the identity is baked into the rig's basis
flame = Flame(model, dtype=torch.float64)
t = lambda a: torch.from_numpy(np.asarray(a, np.float64))
extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
expr = b.expr.astype(np.float64).copy()
for k, v in extra.items():
    expr[int(k.split(':')[0]), int(k.split(':')[1])] = v
p = FlameParams(shape=torch.zeros(flame.num_shape, dtype=torch.float64), expr=t(expr), global_rot=t(b.global_rot),
                neck_pose=t(b.neck_pose), jaw_pose=t(b.jaw_pose), eye_pose=t(b.eye_pose), transl=t(b.transl))
with torch.no_grad():
    verts = flame(p).vertices[frames]
    local = LocalGaussians(parent_face=torch.from_numpy(b.parent_face.astype(np.int64)),
                           local_position=t(b.local_position), local_rotation=t(b.local_rotation),
                           log_scale=t(b.log_scale), opacity_logit=t(b.opacity_logit), sh=t(b.sh))
    off = None if b.detail_offsets is None else t(b.detail_offsets[frames].astype(np.float64))
    w = local_to_world(local, verts, torch.from_numpy(b.faces.astype(np.int64)), off)
np.savez(sys.argv[2], means=w.means.numpy(), quats=w.quats.numpy(), scales=w.scales.numpy(), verts=verts.numpy())
"""


def _oracle(bundle, frames, tmp_path, extra=None):
    out = tmp_path / "oracle.npz"
    args = [str(bundle), str(out), json.dumps(frames), "toy"] + ([json.dumps(extra)] if extra else [])
    backend_run(_ORACLE, *args)
    return dict(np.load(out))


def _import(scene, bundle):
    bpy.ops.mvp4d.add_rig(source="TOY")
    assert bpy.ops.mvp4d.import_avatar(filepath=str(bundle)) == {"FINISHED"}
    return scene.mvp4d.last_avatar


def _splats(scene, obj, frame):
    return import_module(f"{ADDON}.blender.export").splats_at_frame(scene, obj, frame)


def _rot_err(q1, q2):
    binding = import_module(f"{ADDON}.io.binding")
    return np.abs(binding.quat_to_matrix(q1) - binding.quat_to_matrix(q2)).max()


def test_import_builds_a_bound_point_mesh(scene, toy_bundle):
    obj = _import(scene, toy_bundle)
    avatar = import_module(f"{ADDON}.blender.avatar")
    assert avatar.is_avatar(obj) and obj["mvp4d_rig"] == scene.mvp4d.rig
    assert [m.name for m in obj.modifiers] == ["MVP4D Binding", "MVP4D Display"]
    names = {a.name for a in obj.data.attributes}
    assert {"bind_v0", "local_position", "local_rotation", "log_scale", "opacity_logit", "sh_0", "splat_color",
            "splat_opacity"} <= names
    assert obj.data.attributes["local_rotation"].data_type == "QUATERNION"
    assert len(obj.data.vertices) == 9812
    assert (scene.frame_start, scene.frame_end) == (1, 5)  # the rig got the sequence's keyframes


def test_geometry_nodes_match_backend_binding(scene, toy_bundle, tmp_path):
    obj = _import(scene, toy_bundle)
    frames = [0, 1, 2]
    ref = _oracle(toy_bundle, frames, tmp_path)
    size = np.ptp(ref["verts"][0], axis=0).max()
    for i, f in enumerate(frames):
        s = _splats(scene, obj, scene.frame_start + f)
        err = np.abs(s["position"] - ref["means"][i]).max()
        assert err < 1e-4 * size, (f, err)
        assert _rot_err(s["rotation"], ref["quats"][i]) < 1e-4
        np.testing.assert_allclose(s["scale"], ref["scales"][i], rtol=1e-4)
    # the frames really differ (the sequence opens the jaw and smiles)
    assert np.abs(ref["means"][0] - ref["means"][1]).max() > 1e-3


def test_editing_expression_keys_reanimates_the_avatar(scene, toy_bundle, tmp_path):
    obj = _import(scene, toy_bundle)
    rig = scene.mvp4d.rig
    rig_params = import_module(f"{ADDON}.blender.rig_params")
    frame = scene.frame_start + 3
    before = _splats(scene, obj, frame)["position"]
    names = import_module(f"{ADDON}.blender.rig").expression_names(rig)
    k = names.index("smile")
    rp_seq = rig_params.read_sequence(rig, np.arange(scene.frame_start, scene.frame_end + 1, dtype=float))
    expr = rp_seq["expr"].copy()
    expr[3, k] = 1.0
    rig_params.keyframe_sequence(rig, {**{kk: rp_seq[kk] for kk in ("jaw_pose", "neck_pose", "eye_pose", "global_rot",
                                                            "transl")}, "expr": expr}, scene.frame_start)
    after = _splats(scene, obj, frame)["position"]
    moved = np.linalg.norm(after - before, axis=1)
    assert moved.max() > 2e-3 and (moved < 1e-7).mean() > 0.3  # the smile moves the mouth, not the skull
    ref = _oracle(toy_bundle, [3], tmp_path, {f"3:{k}": 1.0})
    assert np.abs(after - ref["means"][0]).max() < 1e-4 * np.ptp(ref["verts"][0], axis=0).max()


def _snapshot():
    return {k: len(getattr(bpy.data, k)) for k in ("objects", "meshes", "node_groups", "materials", "actions")}


def test_topology_mismatch_leaves_nothing_behind(scene, toy_bundle, tmp_path):
    models = import_module(f"{ADDON}.blender.models")
    src = np.load(models.SHIPPED_TOY)
    d = {k: src[k] for k in src.files}
    d["faces"] = d["faces"][:, [0, 2, 1]]  # same vertices, other winding: a different mesh for the binding
    np.savez(tmp_path / "other.npz", **d)
    flame = import_module(f"{ADDON}.io.flame")
    rig = import_module(f"{ADDON}.blender.rig").build_rig(flame.load_flame_npz(tmp_path / "other.npz"), name="Other")
    scene.mvp4d.rig = rig
    basis = import_module(f"{ADDON}.blender.rig").rest_vertices_flame(rig)
    before = _snapshot()
    with pytest.raises(RuntimeError, match="does not have the avatar's topology"):
        bpy.ops.mvp4d.import_avatar(filepath=str(toy_bundle))
    assert _snapshot() == before
    np.testing.assert_array_equal(import_module(f"{ADDON}.blender.rig").rest_vertices_flame(rig), basis)
    assert rig.data.shape_keys.animation_data is None


@pytest.mark.parametrize("case", ["garbage", "missing", "no_rig"])
def test_bad_bundles_leave_nothing_behind(scene, toy_bundle, tmp_path, case):
    bpy.ops.mvp4d.add_rig(source="TOY")
    path = tmp_path / "avatar.safetensors"
    expect = {"garbage": "not a safetensors", "missing": "no avatar bundle", "no_rig": "no FLAME rig"}[case]
    if case == "garbage":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + b"0" * 64)
    elif case == "no_rig":
        path = toy_bundle
        scene.mvp4d.rig = None
    before = _snapshot()
    with pytest.raises(RuntimeError, match=expect):
        bpy.ops.mvp4d.import_avatar(filepath=str(path))
    assert _snapshot() == before


def test_headless_render_shows_the_head(scene, toy_bundle, tmp_path):
    _import(scene, toy_bundle)
    rig = scene.mvp4d.rig
    rig.hide_render = True
    scene.frame_set(scene.frame_start)
    cam = bpy.data.objects.new("front", bpy.data.cameras.new("front"))
    scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler = (0.0, -0.75, 0.0), (np.pi / 2, 0.0, 0.0)
    cam.data.lens = 50
    scene.camera = cam
    r = scene.render
    r.engine, r.resolution_x, r.resolution_y, r.resolution_percentage = "CYCLES", 256, 256, 100
    r.film_transparent = True
    scene.cycles.device, scene.cycles.samples, scene.cycles.use_denoising = "CPU", 4, False
    scene.cycles.max_bounces, scene.cycles.transparent_max_bounces = 0, 32
    scene.view_settings.view_transform = "Standard"
    r.filepath = str(tmp_path / "render.png")
    bpy.ops.render.render(write_still=True)
    img = bpy.data.images.load(str(tmp_path / "render.png"))
    px = np.empty(256 * 256 * 4, np.float32)
    img.pixels.foreach_get(px)
    px = px.reshape(256, 256, 4)[::-1]  # Blender's rows start at the bottom
    alpha = px[..., 3]
    covered = alpha > 0.5
    assert 0.05 < covered.mean() < 0.6, covered.mean()
    assert covered[118:138, 118:138].mean() > 0.9  # the face is where the camera looks
    assert not covered[:20, :20].any() and not covered[-20:, -20:].any()
    rgb = px[..., :3][covered]
    assert rgb.std(axis=0).mean() > 0.03  # textured, not a flat colour
    face = px[100:156, 100:156, :3][covered[100:156, 100:156]].mean(axis=0)
    assert face[0] > face[2]  # skin: more red than blue


def test_generate_on_the_embedded_default_imports_a_bound_avatar(scene, astronaut, tmp_path):
    """The acceptance run: tiny preset, projection generator, toy head -> avatar bound to the rig."""
    bpy.ops.mvp4d.add_rig(source="TOY")
    res = bpy.ops.mvp4d.generate_avatar(image=str(astronaut), preset="tiny", generator="projection",
                                        output_dir=str(tmp_path / "job"), wait=True)
    assert res == {"FINISHED"}, scene.mvp4d.last_error
    obj = scene.mvp4d.last_avatar
    assert obj is not None and obj["mvp4d_rig"] == scene.mvp4d.rig
    bundle = tmp_path / "job" / "outputs" / "avatar.safetensors"
    ref = _oracle(bundle, [0, 2, 4], tmp_path)
    size = np.ptp(ref["verts"][0], axis=0).max()
    for i, f in enumerate([0, 2, 4]):
        s = _splats(scene, obj, scene.frame_start + f)
        assert np.abs(s["position"] - ref["means"][i]).max() < 1e-4 * size


def test_reimport_keeps_the_artists_keyframes_unless_asked(scene, toy_bundle, tmp_path):
    _import(scene, toy_bundle)
    rig = scene.mvp4d.rig
    rig_params = import_module(f"{ADDON}.blender.rig_params")
    # the avatar's own keys are replaced by a re-import without asking
    assert bpy.ops.mvp4d.import_avatar(filepath=str(toy_bundle)) == {"FINISHED"}
    T = 7
    seq = {k: np.zeros((T, n)) for k, n in (("jaw_pose", 3), ("neck_pose", 3), ("eye_pose", 6), ("global_rot", 3),
                                             ("transl", 3))}
    seq["expr"] = np.full((T, 12), 0.3)
    np.savez(tmp_path / "artist.npz", **seq)
    assert bpy.ops.mvp4d.import_sequence(filepath=str(tmp_path / "artist.npz")) == {"FINISHED"}
    frames = np.arange(scene.frame_start, scene.frame_start + T, dtype=float)
    assert bpy.ops.mvp4d.import_avatar(filepath=str(toy_bundle)) == {"FINISHED"}
    np.testing.assert_allclose(rig_params.read_sequence(rig, frames)["expr"], 0.3, atol=1e-6)  # kept
    assert bpy.ops.mvp4d.import_avatar(filepath=str(toy_bundle), replace_keyframes=True) == {"FINISHED"}
    assert np.abs(rig_params.read_sequence(rig, frames[:5])["expr"] - 0.3).max() > 0.05  # the avatar's now
