"""Exports: 3DGS PLY of a frame, PLY per frame, and a .glb the Khronos validator accepts."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import import_module

import bpy
import numpy as np
import pytest

from .conftest import ADDON, REPO

VALIDATOR = REPO / "tools" / "validate_gltf.js"
# Blender 5's glTF importer makes KHR_gaussian_splatting primitives PointCloud objects and then fails on
# their skin (no armature modifier on a point cloud) and morph targets (no shape keys): an importer
# limitation, not an invalid file (the Khronos validator accepts it; Blender 4.5 imports it).
BLENDER5_SPLAT_IMPORT_BUG = bpy.app.version >= (5, 0, 0)


def _blender5_refuses_skinned_splats(path) -> None:
    """Pin the importer limitation above: when Blender fixes it this fails, and the workaround can go."""
    bpy.ops.wm.read_homefile(use_empty=True)
    with pytest.raises(RuntimeError, match="shape_keys|object"):
        bpy.ops.import_scene.gltf(filepath=str(path))


@pytest.fixture
def avatar(scene, toy_bundle):
    bpy.ops.mvp4d.add_rig(source="TOY")
    assert bpy.ops.mvp4d.import_avatar(filepath=str(toy_bundle)) == {"FINISHED"}
    return scene.mvp4d.last_avatar


def test_ply_of_a_frame(scene, avatar, tmp_path):
    frame = scene.frame_start + 2
    assert bpy.ops.mvp4d.export_avatar(format="PLY", filepath=str(tmp_path / "a.ply"), frame=frame) == {"FINISHED"}
    ply = import_module(f"{ADDON}.io.ply").read_splat_ply(tmp_path / "a.ply")
    s = import_module(f"{ADDON}.blender.export").splats_at_frame(scene, avatar, frame)
    np.testing.assert_allclose(np.stack([ply["x"], ply["y"], ply["z"]], 1), s["position"], atol=1e-6)
    np.testing.assert_allclose(np.stack([ply[f"scale_{i}"] for i in range(3)], 1), np.log(s["scale"]), atol=1e-5)
    assert {"f_dc_0", "f_rest_8", "opacity", "rot_3", "nx"} <= set(ply) and "f_rest_9" not in ply  # SH degree 1
    # +y up in the file: the top of the head is at +y
    assert ply["y"].max() > 0.1
    assert scene.frame_current == scene.frame_start  # exporting a frame does not move the timeline


def test_ply_per_frame(scene, avatar, tmp_path):
    out = tmp_path / "frames"
    assert bpy.ops.mvp4d.export_avatar(format="PLY_SEQUENCE", filepath=str(out)) == {"FINISHED"}
    files = sorted(out.glob("*.ply"))
    assert len(files) == scene.frame_end - scene.frame_start + 1
    ply = import_module(f"{ADDON}.io.ply")
    a, b = ply.read_splat_ply(files[0]), ply.read_splat_ply(files[2])
    assert np.abs(a["y"] - b["y"]).max() > 1e-3  # the jaw opens in between


@pytest.mark.skipif(shutil.which("node") is None or not (REPO / "tools" / "node_modules" / "gltf-validator").is_dir(),
                    reason="node + gltf-validator are installed by `make test` (tools/node_modules)")
def test_glb_passes_the_khronos_validator_and_reimports(scene, avatar, toy_bundle, tmp_path):
    path = tmp_path / "avatar.glb"
    assert bpy.ops.mvp4d.export_avatar(format="GLB", filepath=str(path)) == {"FINISHED"}
    out = subprocess.run(["node", str(VALIDATOR), str(path)], capture_output=True, text=True, timeout=120)
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["numErrors"] == 0, json.dumps(report["errors"], indent=1)[:3000]
    # the only excused issues are the extension's namespaced attributes, which this validator predates
    assert all(e["pointer"].split("/")[-1].startswith("KHR_gaussian_splatting:") for e in report["excused"])
    info = report["report"]["info"]
    assert info["animationCount"] == 1 and info["totalVertexCount"] >= 4912 + 9812
    # and it comes back into Blender with the morph targets and the animation
    if BLENDER5_SPLAT_IMPORT_BUG:
        _blender5_refuses_skinned_splats(path)
        path = tmp_path / "avatar_rigid.glb"  # the head and its animation, with splats Blender 5 can import
        bpy.ops.wm.read_homefile(use_empty=True)
        bpy.ops.mvp4d.add_rig(source="TOY")
        bpy.ops.mvp4d.import_avatar(filepath=str(toy_bundle))
        assert bpy.ops.mvp4d.export_avatar(format="GLB", filepath=str(path), splat_mode="RIGID") == {"FINISHED"}
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(path))
    heads = [o for o in bpy.data.objects if o.type == "MESH" and o.data.shape_keys is not None]
    assert heads, "no mesh with shape keys came back"
    names = [k.name for k in heads[0].data.shape_keys.key_blocks]
    assert "smile" in names and "jaw_open" in names and len(names) == 13
    assert len(bpy.data.actions) >= 1
    assert any(o.type == "ARMATURE" for o in bpy.data.objects)


@pytest.mark.skipif(shutil.which("node") is None or not (REPO / "tools" / "node_modules" / "gltf-validator").is_dir(),
                    reason="node + gltf-validator are installed by `make test` (tools/node_modules)")
@pytest.mark.parametrize("proxy,splats", [("VISIBLE", "RIGID"), ("NONE", "STATIC")])
def test_glb_options_validate_and_reimport(scene, avatar, tmp_path, proxy, splats):
    path = tmp_path / "avatar.glb"
    assert bpy.ops.mvp4d.export_avatar(format="GLB", filepath=str(path), head_proxy=proxy,
                                       splat_mode=splats) == {"FINISHED"}
    out = subprocess.run(["node", str(VALIDATOR), str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[:3000]
    doc = json.loads(path.read_bytes()[20:20 + int.from_bytes(path.read_bytes()[12:16], "little")])
    names = [n["name"] for n in doc["nodes"]]
    assert ("head" in names) == (proxy == "VISIBLE")
    assert ("splats_jaw" in names) == (splats == "RIGID") and ("splats" in names) == (splats == "STATIC")
    bpy.ops.wm.read_homefile(use_empty=True)
    assert bpy.ops.import_scene.gltf(filepath=str(path)) == {"FINISHED"}
    assert any(o.type == "ARMATURE" for o in bpy.data.objects)


def test_skinned_glb_splats_carry_the_skin_and_morphs(scene, avatar, tmp_path):
    path = tmp_path / "avatar.glb"
    assert bpy.ops.mvp4d.export_avatar(format="GLB", filepath=str(path)) == {"FINISHED"}
    gl = import_module(f"{ADDON}.io.gltf")
    doc, blob = gl.read_glb(path)
    node = next(n for n in doc["nodes"] if n["name"] == "splats")
    prim = doc["meshes"][node["mesh"]]["primitives"][0]
    assert node["skin"] == 0 and {"JOINTS_0", "WEIGHTS_0", "COLOR_0"} <= set(prim["attributes"])
    names = doc["meshes"][node["mesh"]]["extras"]["targetNames"]
    jaw = gl.read_accessor(doc, blob, prim["targets"][names.index("jaw_open")]["POSITION"])
    assert np.linalg.norm(jaw, axis=1).max() > 1e-3  # the jaw blendshape moves the mouth's splats
    if BLENDER5_SPLAT_IMPORT_BUG:
        _blender5_refuses_skinned_splats(path)
        return
    bpy.ops.wm.read_homefile(use_empty=True)
    assert bpy.ops.import_scene.gltf(filepath=str(path)) == {"FINISHED"}


def test_spz_of_a_frame(scene, avatar, tmp_path):
    import gzip

    frame = scene.frame_start + 2
    assert bpy.ops.mvp4d.export_avatar(format="SPZ", filepath=str(tmp_path / "a.spz"), frame=frame) == {"FINISHED"}
    raw = gzip.decompress((tmp_path / "a.spz").read_bytes())
    n = int.from_bytes(raw[8:12], "little")
    s = import_module(f"{ADDON}.blender.export").splats_at_frame(scene, avatar, frame)
    assert raw[:4] == b"NGSP" and raw[4] == 2 and n == len(s["position"])
    b = np.frombuffer(raw[16:16 + 9 * n], np.uint8).reshape(n, 3, 3).astype(np.int64)
    fixed = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    pos = np.where(fixed >= 1 << 23, fixed - (1 << 24), fixed) / 4096.0
    assert np.abs(pos - s["position"]).max() < 1e-3


def test_ply_y_down_option(scene, avatar, tmp_path):
    assert bpy.ops.mvp4d.export_avatar(format="PLY", filepath=str(tmp_path / "a.ply"), frame=scene.frame_start,
                                       ply_axes="Y_DOWN") == {"FINISHED"}
    ply = import_module(f"{ADDON}.io.ply").read_splat_ply(tmp_path / "a.ply")
    s = import_module(f"{ADDON}.blender.export").splats_at_frame(scene, avatar, scene.frame_start)
    np.testing.assert_allclose(np.stack([ply["x"], ply["y"], ply["z"]], 1), s["position"] * [1, -1, -1], atol=1e-6)
    assert ply["y"].min() < -0.1  # the top of the head is at -y
