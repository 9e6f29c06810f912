"""The camera ring: placement and read-back equal the backend's cameras numerically."""

from __future__ import annotations

import json
from importlib import import_module

import bpy
import numpy as np
import pytest

from .conftest import ADDON, backend_run

_BACKEND_RING = """
import json, sys, torch
import numpy as np
from backend.cameras import ring_preset
from backend.conditioning.crop import CROP_SCALE
from backend.flame import Flame, load_flame
from backend.protocol import PRESETS
from backend.job_stages import head_bounds
distance = float(sys.argv[1])
flame = Flame(load_flame("toy"))
center, extent = head_bounds(flame, torch.zeros(flame.num_shape))
out = {}
for name in PRESETS:
    res = PRESETS[name].resolution
    ring = ring_preset(name, center=center, distance=distance, focal_px=res * distance / (CROP_SCALE * extent),
                       resolution=res)
    out[name] = [c.to_spec().__dict__ for c in ring.cameras]
print(json.dumps(out))
"""

_BACKEND_CONVERT = """
import json, sys
import numpy as np
from backend.cameras import blender_from_opencv, opencv_from_blender
cases = json.loads(sys.stdin.read() if False else open(sys.argv[1]).read())
out = []
for c in cases:
    cam = opencv_from_blender(np.array(c["M"]), c["lens"], c["sw"], c["sh"], c["fit"], c["rx"], c["ry"], c["shx"],
                              c["shy"], c["asp"])
    b = blender_from_opencv(cam, c["sw"], c["sh"], c["fit"])
    out.append({"K": cam.K.tolist(), "w2c": cam.world_to_cam.tolist(), "M": b.matrix_world.tolist(),
                "lens": b.lens_mm, "shift": [b.shift_x, b.shift_y], "asp": [b.pixel_aspect_x, b.pixel_aspect_y]})
print(json.dumps(out))
"""


def test_conversion_equals_backend(addon, tmp_path):
    cams = import_module(f"{ADDON}.io.camera_math")
    rng = np.random.default_rng(1)
    cases = []
    for i in range(12):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        w, x, y, z = q
        R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
        M = np.eye(4)
        M[:3, :3], M[:3, 3] = R, rng.normal(size=3)
        cases.append({"M": M.tolist(), "lens": float(rng.uniform(20, 120)), "sw": 36.0, "sh": 24.0,
                      "fit": ("AUTO", "HORIZONTAL", "VERTICAL")[i % 3], "rx": int(rng.integers(64, 800)),
                      "ry": int(rng.integers(64, 800)), "shx": float(rng.uniform(-0.2, 0.2)),
                      "shy": float(rng.uniform(-0.2, 0.2)), "asp": float(rng.choice([1.0, 1.3, 0.8]))})
    f = tmp_path / "cases.json"
    f.write_text(json.dumps(cases))
    ref = json.loads(backend_run(_BACKEND_CONVERT, str(f)))
    for c, r in zip(cases, ref):
        cam = cams.opencv_from_blender(np.array(c["M"]), c["lens"], c["sw"], c["sh"], c["fit"], c["rx"], c["ry"],
                                       c["shx"], c["shy"], c["asp"])
        np.testing.assert_allclose(cam.K, r["K"], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(cam.world_to_cam, r["w2c"], rtol=1e-12, atol=1e-12)
        b = cams.blender_from_opencv(cam, c["sw"], c["sh"], c["fit"])
        np.testing.assert_allclose(b.matrix_world, r["M"], atol=1e-12)
        np.testing.assert_allclose([b.lens_mm, b.shift_x, b.shift_y, b.pixel_aspect_x, b.pixel_aspect_y],
                                   [r["lens"], *r["shift"], *r["asp"]], rtol=1e-12, atol=1e-12)


def test_ring_layouts_equal_backend(addon):
    cams = import_module(f"{ADDON}.io.camera_math")
    ref = json.loads(backend_run("import json; from backend.cameras import RING_LAYOUTS; print(json.dumps(RING_LAYOUTS))"))
    assert {k: [[list(v) for v in part] for part in lay] for k, lay in cams.RING_LAYOUTS.items()} == ref


@pytest.fixture(scope="module")
def backend_rings(addon):
    return json.loads(backend_run(_BACKEND_RING, "0.9"))


@pytest.mark.parametrize("preset", ["tiny", "preview", "120", "360"])
def test_ring_read_back_equals_backend_ring(scene, preset, backend_rings):
    bpy.ops.mvp4d.add_rig(source="TOY")
    assert bpy.ops.mvp4d.add_camera_ring(preset=preset, distance=0.9) == {"FINISHED"}
    coll = scene.mvp4d.cameras
    camops = import_module(f"{ADDON}.blender.camera_objects")
    proto = import_module(f"{ADDON}.backend_link").protocol()
    got = camops.read_ring(coll, scene.mvp4d.rig, proto.PRESETS[preset].resolution)
    ref = {c["name"]: c for c in backend_rings[preset]}
    assert sorted(c["name"] for c in got) == sorted(ref)
    for c in got:
        r = ref[c["name"]]
        assert c["key"] == r["key"] and (c["width"], c["height"]) == (r["width"], r["height"])
        np.testing.assert_allclose([c["fx"], c["fy"], c["cx"], c["cy"]], [r["fx"], r["fy"], r["cx"], r["cy"]],
                                   rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(c["world_to_cam"], r["world_to_cam"], atol=2e-6)
    keys = [o for o in camops.collection_cameras(coll) if o.get(camops.KEY_PROP)]
    others = [o for o in camops.collection_cameras(coll) if not o.get(camops.KEY_PROP)]
    assert len(keys) == proto.PRESETS[preset].num_key_views and len(others) == proto.PRESETS[preset].num_other_views
    assert all(k.data.display_size > o.data.display_size for k in keys for o in others[:1])
    assert all(camops.KEY_COLLECTION in [c.name.split(".")[0] for c in k.users_collection] for k in keys)


def test_cameras_are_read_back_as_they_are(scene):
    bpy.ops.mvp4d.add_rig(source="TOY")
    bpy.ops.mvp4d.add_camera_ring(preset="tiny", distance=1.0)
    camops = import_module(f"{ADDON}.blender.camera_objects")
    obj = camops.collection_cameras(scene.mvp4d.cameras)[0]
    before = camops.read_camera(obj, np.eye(4), 64, 64)
    obj.location.x += 0.1
    obj.data.lens *= 2
    bpy.context.view_layer.update()
    after = camops.read_camera(obj, np.eye(4), 64, 64)
    assert after.K[0, 0] == pytest.approx(2 * before.K[0, 0])
    centre = lambda c: -c.world_to_cam[:3, :3].T @ c.world_to_cam[:3, 3]  # noqa: E731
    np.testing.assert_allclose(centre(after) - centre(before), [0.1, 0, 0], atol=1e-6)


def test_custom_ring_and_moved_rig(scene):
    bpy.ops.mvp4d.add_rig(source="TOY")
    rig = scene.mvp4d.rig
    scene.mvp4d.ring_preset = "custom"
    assert bpy.ops.mvp4d.add_camera_ring(count=9, azimuth_range=360.0, elevation=10.0, distance=1.2) == {"FINISHED"}
    camops = import_module(f"{ADDON}.blender.camera_objects")
    specs = camops.read_ring(scene.mvp4d.cameras, rig, 128)
    assert len(specs) == 9 and sum(s["key"] for s in specs) == 3
    # moving the whole rig moves nothing the backend sees
    rig.parent.location = (1.0, 2.0, 3.0)
    for o in camops.collection_cameras(scene.mvp4d.cameras):
        o.location = np.array(o.location) + np.array([1.0, 2.0, 3.0])
    bpy.context.view_layer.update()
    moved = camops.read_ring(scene.mvp4d.cameras, rig, 128)
    for a, b in zip(specs, moved):
        np.testing.assert_allclose(a["world_to_cam"], b["world_to_cam"], atol=1e-5)


def test_camera_object_names_become_names_the_backend_accepts(scene):
    """Blender allows any object name; the view folders made from them must pass the backend's check."""
    bpy.ops.mvp4d.add_rig(source="TOY")
    rig = scene.mvp4d.rig
    scene.mvp4d.ring_preset = "custom"
    assert bpy.ops.mvp4d.add_camera_ring(count=8, azimuth_range=120.0, elevation=0.0, distance=1.2) == {"FINISHED"}
    camops = import_module(f"{ADDON}.blender.camera_objects")
    hostile = ["..", ".hidden", "CON", "Cam", "cam", "a/../../b", "x.", "\u00e9" * 70]
    for obj, name in zip(camops.collection_cameras(scene.mvp4d.cameras), hostile):
        obj.name = name
    specs = camops.read_ring(scene.mvp4d.cameras, rig, 128)
    proto = import_module(f"{ADDON}.backend_link").protocol()
    spec = proto.JobSpec.from_json({"schema_version": 1, "inputs": {"reference_image": "inputs/reference.png"},
                                    "cameras": {"cameras": specs}})  # raises BAD_INPUT on any unsafe name
    assert len({proto.name_key(c.name) for c in spec.cameras.cameras}) == 8


@pytest.mark.parametrize("fit,res,shift,aspect", [
    ("AUTO", (640, 360), (0.1, -0.05), (1.0, 1.0)),
    ("HORIZONTAL", (300, 500), (-0.08, 0.12), (2.0, 1.0)),
    ("VERTICAL", (640, 360), (0.05, 0.2), (1.0, 1.5)),
    ("AUTO", (300, 500), (0.0, 0.0), (1.0, 2.0)),
])
def test_conversion_projects_like_blender(scene, fit, res, shift, aspect):
    """opencv_from_blender puts every point on the pixel where Blender's own projection
    (``world_to_camera_view``: sensor fit, shift, pixel aspect) puts it."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Euler, Vector

    cams = import_module(f"{ADDON}.io.camera_math")
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = res[0], res[1], 100
    r.pixel_aspect_x, r.pixel_aspect_y = aspect
    data = bpy.data.cameras.new("c")
    data.type, data.sensor_fit, data.lens = "PERSP", fit, 42.0
    data.sensor_width, data.sensor_height = 36.0, 20.0
    data.shift_x, data.shift_y = shift
    obj = bpy.data.objects.new("c", data)
    scene.collection.objects.link(obj)
    obj.location = (0.3, -1.2, 0.25)
    obj.rotation_euler = Euler((1.35, 0.1, 0.2))
    bpy.context.view_layer.update()
    cam = cams.opencv_from_blender(np.array(obj.matrix_world), data.lens, data.sensor_width, data.sensor_height,
                                   data.sensor_fit, res[0], res[1], data.shift_x, data.shift_y, aspect[0] / aspect[1])
    rng = np.random.default_rng(0)
    cam_to_world = np.array(obj.matrix_world)
    local = np.c_[rng.uniform(-0.3, 0.3, (40, 2)), -rng.uniform(0.5, 2.0, 40), np.ones(40)]  # in front (-z)
    world_bl = (cam_to_world @ local.T).T[:, :3]
    ours_uv = []
    for p in world_bl:
        q = cams.BLENDER_TO_FLAME[:3, :3] @ p + cams.BLENDER_TO_FLAME[:3, 3]
        c = cam.world_to_cam[:3, :3] @ q + cam.world_to_cam[:3, 3]
        assert c[2] > 0
        ours_uv.append([cam.K[0, 0] * c[0] / c[2] + cam.K[0, 2], cam.K[1, 1] * c[1] / c[2] + cam.K[1, 2]])
    theirs = np.array([world_to_camera_view(scene, obj, Vector(p.tolist()))[:2] for p in world_bl])
    # Blender: (0, 0) bottom-left corner, (1, 1) top-right; ours: pixel centres at integers, +v down
    theirs_uv = np.c_[theirs[:, 0] * res[0] - 0.5, (1.0 - theirs[:, 1]) * res[1] - 0.5]
    np.testing.assert_allclose(np.array(ours_uv), theirs_uv, atol=1e-3)
