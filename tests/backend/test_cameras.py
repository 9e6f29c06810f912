"""Cameras, rings and the Blender <-> OpenCV conversion (backend/cameras.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from backend.cameras import (
    BLENDER_TO_FLAME,
    FLAME_TO_BLENDER,
    RING_LAYOUTS,
    Camera,
    CameraRing,
    blender_from_opencv,
    closest_reference_angle,
    look_at,
    opencv_from_blender,
    orbit_camera,
    orbit_direction,
    ring_preset,
    stack_K,
    stack_world_to_cam,
    view_angle,
)
from backend.errors import MVP4DError
from backend.protocol import PRESETS, CameraSpec


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _random_camera(rng: np.random.Generator, name: str = "cam") -> Camera:
    w, h = int(rng.integers(32, 2000)), int(rng.integers(32, 2000))
    fx = float(rng.uniform(100, 4000))
    fy = fx * float(rng.uniform(0.5, 2.0))
    cx = (w - 1) / 2 + float(rng.uniform(-0.3, 0.3)) * w
    cy = (h - 1) / 2 + float(rng.uniform(-0.3, 0.3)) * h
    w2c = np.eye(4)
    w2c[:3, :3] = _random_rotation(rng)
    w2c[:3, 3] = rng.normal(size=3)
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    return Camera(K=K, world_to_cam=w2c, width=w, height=h, name=name)


# ---------------------------------------------------------------------------------------------
# Camera basics
# ---------------------------------------------------------------------------------------------


def test_look_at_frontal_axes():
    cam = Camera(K=np.array([[100.0, 0, 31.5], [0, 100.0, 31.5], [0, 0, 1]]),
                 world_to_cam=look_at((0, 0, 2), (0, 0, 0)), width=64, height=64)
    np.testing.assert_allclose(cam.center, [0, 0, 2], atol=1e-12)
    np.testing.assert_allclose(cam.forward, [0, 0, -1], atol=1e-12)
    uv, z = cam.project(np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0]]))
    np.testing.assert_allclose(uv[0], [31.5, 31.5], atol=1e-9)
    np.testing.assert_allclose(z, 2.0, atol=1e-12)
    assert uv[1, 0] > 31.5  # +x (the subject's left) appears on the image right
    assert uv[2, 1] < 31.5  # +y (up) appears above the centre
    np.testing.assert_allclose(cam.cam_to_world @ cam.world_to_cam, np.eye(4), atol=1e-12)
    with pytest.raises(MVP4DError):
        look_at((0, 2, 0), (0, 0, 0))  # up parallel to the view


def test_camera_validation():
    with pytest.raises(MVP4DError) as e:
        Camera(K=np.eye(2), world_to_cam=np.eye(4), width=8, height=8)
    assert e.value.code == "BAD_INPUT"


@pytest.mark.parametrize("az,el", [(0, 0), (30, 0), (-75, 20), (180, -30), (45, 89.9), (0, 90), (120, 90), (10, -90)])
def test_orbit_camera(az, el):
    center = np.array([0.01, 0.02, -0.03])
    cam = orbit_camera(az, el, center=center, distance=1.2, focal_px=500, resolution=(64, 48))
    R = cam.world_to_cam[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(cam.center, center + 1.2 * orbit_direction(az, el), atol=1e-12)
    np.testing.assert_allclose(cam.forward, -orbit_direction(az, el), atol=1e-12)
    uv, z = cam.project(center[None])
    np.testing.assert_allclose(uv[0], [31.5, 23.5], atol=1e-9)  # looks at the centre
    assert z[0] == pytest.approx(1.2)
    # image up = direction of increasing elevation (well defined at the poles)
    a, e = math.radians(az), math.radians(el)
    tangent = np.array([-math.sin(e) * math.sin(a), math.cos(e), -math.sin(e) * math.cos(a)])
    uv, _ = cam.project(center[None] + 0.05 * tangent[None])
    assert uv[0, 0] == pytest.approx(31.5) and uv[0, 1] < 23.5 - 5


def test_orbit_directions_semantics():
    assert orbit_camera(0, 0, distance=2).center == pytest.approx([0, 0, 2])
    assert orbit_camera(90, 0).center == pytest.approx([1, 0, 0])  # subject's left is +x
    assert orbit_camera(0, 90).center == pytest.approx([0, 1, 0])
    assert orbit_camera(0, -90).center == pytest.approx([0, -1, 0])
    top = orbit_camera(0, 90, resolution=64)
    uv, _ = top.project(np.array([[0, 0, 0.1]]))  # the face side (+z) is at the bottom of a top view
    assert uv[0, 1] > 31.5


def test_project_and_rays_agree():
    rng = np.random.default_rng(0)
    cam = _random_camera(rng)
    o, d = cam.rays()
    assert o.shape == d.shape == (cam.height, cam.width, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-12)
    for i, j in [(0, 0), (cam.height - 1, cam.width - 1), (5, 17)]:
        uv, z = cam.project(o[i, j][None] + 3.0 * d[i, j][None])
        np.testing.assert_allclose(uv[0], [j, i], atol=1e-7)
        assert z[0] > 0
    # rays at another resolution use the rescaled intrinsics
    o2, d2 = cam.rays(cam.height // 2, cam.width // 2)
    assert d2.shape == (cam.height // 2, cam.width // 2, 3)
    half = cam.scaled(cam.width // 2, cam.height // 2)
    uv, _ = half.project(o2[3, 4][None] + d2[3, 4][None])
    np.testing.assert_allclose(uv[0], [4, 3], atol=1e-7)


def test_scaled_and_cropped_intrinsics():
    cam = orbit_camera(10, 5, focal_px=300, resolution=(64, 48))
    pts = np.random.default_rng(1).normal(scale=0.05, size=(20, 3))
    uv, _ = cam.project(pts)
    s = cam.scaled(128, 96)
    uv2, _ = s.project(pts)
    np.testing.assert_allclose(uv2, (uv + 0.5) * 2 - 0.5, atol=1e-9)
    # pixel (row 0, col 0) of a 2x downscale covers full-res pixels 0..1: centre at u = 0.5
    h = cam.scaled(32, 24)
    assert h.cx == pytest.approx((cam.cx + 0.5) / 2 - 0.5)
    np.testing.assert_allclose(cam.scaled(32, 24).scaled(64, 48).K, cam.K, atol=1e-12)
    # crop: same size -> pure shift; box may extend outside the image
    c = cam.cropped(-5, 7, 40, 40)
    uv3, _ = c.project(pts)
    np.testing.assert_allclose(uv3, uv - [-5, 7], atol=1e-9)
    c = cam.cropped(10, 4, 40, 80)
    uv4, _ = c.project(pts)
    np.testing.assert_allclose(uv4, (uv - [10, 4] + 0.5) * 2 - 0.5, atol=1e-9)
    assert (c.width, c.height) == (80, 80)
    sq = orbit_camera(0, 0, focal_px=300, resolution=64)
    np.testing.assert_allclose(sq.cropped(0, 0, 64, 32).K, sq.scaled(32, 32).K, atol=1e-12)


def test_spec_round_trip_and_stacks():
    rng = np.random.default_rng(2)
    cams = [_random_camera(rng, f"c{i}") for i in range(3)]
    cams[1].key = True
    for cam in cams:
        spec = cam.to_spec()
        spec2 = CameraSpec.from_json(json.loads(json.dumps(spec.__dict__)), "cam")
        back = Camera.from_spec(spec2)
        np.testing.assert_allclose(back.K, cam.K, atol=1e-12)
        np.testing.assert_allclose(back.world_to_cam, cam.world_to_cam, atol=1e-12)
        assert (back.width, back.height, back.name, back.key) == (cam.width, cam.height, cam.name, cam.key)
    K, M = stack_K(cams), stack_world_to_cam(cams, dtype=torch.float64)
    assert K.shape == (3, 3, 3) and K.dtype == torch.float32
    assert M.shape == (3, 4, 4) and M.dtype == torch.float64
    np.testing.assert_allclose(M[2].numpy(), cams[2].world_to_cam)


# ---------------------------------------------------------------------------------------------
# Rings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRESETS))
def test_ring_preset_counts_and_structure(name):
    p = PRESETS[name]
    ring = ring_preset(name, center=(0, 0.02, 0), distance=1.1)
    assert len(ring.cameras) == p.num_views
    assert len(ring.key_indices) == p.num_key_views
    assert ring.key_indices == list(range(p.num_key_views))
    assert [c.key for c in ring.cameras] == [i in ring.key_indices for i in range(p.num_views)]
    assert len({c.name for c in ring.cameras}) == p.num_views
    assert all(c.width == c.height == p.resolution for c in ring.cameras)
    # clusters partition the other views in groups of up to 4
    flat = sorted(i for cl in ring.clusters for i in cl)
    assert flat == ring.other_indices
    assert all(1 <= len(cl) <= 4 for cl in ring.clusters)
    if p.num_other_views % 4 == 0:
        assert [len(cl) for cl in ring.clusters] == [4] * (p.num_other_views // 4)
    for ck in ring.cluster_keys:
        assert len(ck) == min(4, p.num_key_views) and set(ck) <= set(ring.key_indices)
    # every camera looks at the centre
    for cam in ring.cameras:
        uv, z = cam.project(np.array([[0, 0.02, 0]]))
        np.testing.assert_allclose(uv[0], [(cam.width - 1) / 2] * 2, atol=1e-6)
        assert z[0] == pytest.approx(1.1)
    # deterministic
    again = ring_preset(name, center=(0, 0.02, 0), distance=1.1)
    assert again.clusters == ring.clusters and again.cluster_keys == ring.cluster_keys


def test_ring_ranges():
    ae = np.array(ring_preset("120").azimuth_elevation)
    assert np.abs(ae[:, 0]).max() == 60 and ae[:, 1].min() >= -15 and ae[:, 1].max() == 30
    ae = np.array(ring_preset("360").azimuth_elevation)
    assert ae[:, 1].min() == -30 and ae[:, 1].max() <= 90
    az = np.sort(ae[:, 0] % 360)
    assert np.diff(np.concatenate([az, [az[0] + 360]])).max() <= 45  # all around the head
    for name in ("tiny", "preview"):
        ae = np.array(ring_preset(name).azimuth_elevation)
        assert np.abs(ae[:, 0]).max() < 60 and np.abs(ae[:, 1]).max() < 30
    assert set(RING_LAYOUTS) == set(PRESETS)


@pytest.mark.parametrize("name,max_key_gap,max_cluster_span", [("120", 25, 35), ("360", 50, 65)])
def test_ring_keys_spread_and_clusters_local(name, max_key_gap, max_cluster_span):
    ring = ring_preset(name)
    # every view is near some key view, and key views are well separated
    for i in ring.other_indices:
        assert closest_reference_angle(ring, i, ring.key_indices) < max_key_gap
    keys = ring.key_indices
    assert min(view_angle(ring.cameras[a], ring.cameras[b]) for a in keys for b in keys if a < b) > 20
    for cl, ck in zip(ring.clusters, ring.cluster_keys):
        span = max(view_angle(ring.cameras[a], ring.cameras[b]) for a in cl for b in cl)
        assert span < max_cluster_span
        # the cluster's keys are the 4 nearest to its mean direction, nearest first
        dirs = ring.directions()
        m = dirs[cl].mean(0)
        m /= np.linalg.norm(m)
        ang = {k: math.degrees(math.acos(np.clip(dirs[k] @ m, -1, 1))) for k in keys}
        ordered = sorted(keys, key=lambda k: (round(ang[k], 6), k))
        assert ck == ordered[:4]


def test_ring_120_clusters_are_grid_blocks():
    ring = ring_preset("120")
    ae = ring.azimuth_elevation
    blocks = sorted(sorted(ae[i] for i in cl) for cl in ring.clusters)
    expected = sorted(
        sorted((float(a), float(e)) for a in azs for e in els)
        for azs in ((-60, -36), (-12, 12), (36, 60))
        for els in ((-15, 0), (15, 30))
    )
    assert blocks == expected


def test_from_cameras_keys_and_errors():
    with pytest.raises(MVP4DError) as e:
        CameraRing.from_cameras([])
    assert e.value.code == "BAD_INPUT" and "empty" in e.value.message
    cams = [orbit_camera(a, e, name=f"c{i}") for i, (a, e) in enumerate((a, e) for e in (-10, 10, 30) for a in range(-60, 61, 15))]
    ring = CameraRing.from_cameras(cams)  # no key flags: farthest-point sampling
    assert len(ring.key_indices) == 8
    assert [c.key for c in ring.cameras] == [i in ring.key_indices for i in range(len(cams))]
    assert not any(c.key for c in cams)  # inputs untouched
    assert CameraRing.from_cameras(cams).key_indices == ring.key_indices
    assert sum(len(c) for c in ring.clusters) == len(cams) - 8
    small = CameraRing.from_cameras(cams[:3])
    assert small.key_indices == [0, 1, 2] and small.clusters == []
    flagged = [orbit_camera(a, 0, key=(a == 0), name=str(a)) for a in (-30, -10, 0, 10, 30)]
    r = CameraRing.from_cameras(flagged)
    assert r.key_indices == [2] and r.clusters == [[0, 1, 3, 4]] and r.cluster_keys == [[2]]


def test_view_angles():
    a, b = orbit_camera(0, 0), orbit_camera(30, 0)
    assert view_angle(a, b) == pytest.approx(30)
    assert view_angle(a, orbit_camera(0, 90)) == pytest.approx(90)
    assert view_angle(a, b, center=(0, 0, 0)) == pytest.approx(30)
    ring = ring_preset("tiny")
    assert closest_reference_angle(ring, 0, [0]) == pytest.approx(0, abs=1e-5)
    with pytest.raises(MVP4DError):
        closest_reference_angle(ring, 0, [])


# ---------------------------------------------------------------------------------------------
# Blender <-> OpenCV
# ---------------------------------------------------------------------------------------------


def test_flame_to_blender_axes():
    # FLAME +y (up) -> Blender +z; FLAME +z (face forward) -> Blender -y (towards a front-view camera)
    np.testing.assert_allclose(FLAME_TO_BLENDER[:3, :3] @ [0, 1, 0], [0, 0, 1])
    np.testing.assert_allclose(FLAME_TO_BLENDER[:3, :3] @ [0, 0, 1], [0, -1, 0])
    np.testing.assert_allclose(FLAME_TO_BLENDER @ BLENDER_TO_FLAME, np.eye(4))


@pytest.mark.parametrize("fit", ["AUTO", "HORIZONTAL", "VERTICAL"])
def test_blender_round_trip(fit):
    rng = np.random.default_rng({"AUTO": 3, "HORIZONTAL": 4, "VERTICAL": 5}[fit])
    for i in range(25):
        cam = _random_camera(rng)
        if i % 3 == 0:  # square pixels too
            cam.K[1, 1] = cam.K[0, 0]
        bl = blender_from_opencv(cam, sensor_width_mm=36.0, sensor_height_mm=24.0, sensor_fit=fit)
        assert min(bl.pixel_aspect_x, bl.pixel_aspect_y) == pytest.approx(1.0)
        back = opencv_from_blender(bl.matrix_world, bl.lens_mm, bl.sensor_width_mm, bl.sensor_height_mm,
                                   bl.sensor_fit, bl.res_x, bl.res_y, bl.shift_x, bl.shift_y,
                                   bl.pixel_aspect_x / bl.pixel_aspect_y)
        np.testing.assert_allclose(back.K, cam.K, rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(back.world_to_cam, cam.world_to_cam, atol=1e-9)
        assert (back.width, back.height) == (cam.width, cam.height)
    # Blender parameters -> camera -> Blender parameters
    for _ in range(25):
        M = np.eye(4)
        M[:3, :3] = _random_rotation(rng)
        M[:3, 3] = rng.normal(size=3)
        args = dict(lens_mm=float(rng.uniform(10, 200)), sensor_width_mm=float(rng.uniform(10, 40)),
                    sensor_height_mm=float(rng.uniform(10, 40)), sensor_fit=fit,
                    res_x=int(rng.integers(32, 2000)), res_y=int(rng.integers(32, 2000)),
                    shift_x=float(rng.uniform(-0.5, 0.5)), shift_y=float(rng.uniform(-0.5, 0.5)),
                    pixel_aspect=float(rng.choice([1.0, rng.uniform(0.5, 2)])))
        cam = opencv_from_blender(M, **args)
        bl = blender_from_opencv(cam, args["sensor_width_mm"], args["sensor_height_mm"], fit)
        np.testing.assert_allclose(bl.matrix_world, M, atol=1e-9)
        for k in ("lens_mm", "shift_x", "shift_y"):
            assert getattr(bl, k) == pytest.approx(args[k], abs=1e-9)
        assert bl.pixel_aspect_x / bl.pixel_aspect_y == pytest.approx(args["pixel_aspect"])


def test_blender_known_values():
    # Blender's default camera: 50 mm lens, 36 mm sensor, 1920x1080, AUTO -> horizontal fit
    cam = opencv_from_blender(np.eye(4), 50.0, 36.0, 24.0, "AUTO", 1920, 1080)
    assert cam.fx == pytest.approx(50 * 1920 / 36) and cam.fy == pytest.approx(cam.fx)
    assert (cam.cx, cam.cy) == (959.5, 539.5)
    # portrait image with AUTO: the 36 mm sensor spans the height
    cam = opencv_from_blender(np.eye(4), 50.0, 36.0, 24.0, "AUTO", 1080, 1920)
    assert cam.fy == pytest.approx(50 * 1920 / 36)
    # VERTICAL uses the sensor height along the image height
    cam = opencv_from_blender(np.eye(4), 50.0, 36.0, 24.0, "VERTICAL", 1920, 1080)
    assert cam.fy == pytest.approx(50 * 1080 / 24)
    # a shift of 0.1 moves the view right by a tenth of the (fitted) width: principal point left
    cam = opencv_from_blender(np.eye(4), 50.0, 36.0, 24.0, "HORIZONTAL", 1000, 500, shift_x=0.1, shift_y=0.1)
    assert cam.cx == pytest.approx(499.5 - 100) and cam.cy == pytest.approx(249.5 + 100)


def test_blender_camera_geometry():
    # level Blender camera at (0, -2, 0.1) looking along Blender +y (rotation_euler = (90, 0, 0))
    M = np.eye(4)
    M[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]
    M[:3, 3] = [0, -2, 0.1]
    cam = opencv_from_blender(M, 50.0, 36.0, 24.0, "AUTO", 640, 480)

    def proj(p_blender):
        p = (BLENDER_TO_FLAME @ np.append(p_blender, 1.0))[:3]
        uv, z = cam.project(p[None])
        return uv[0], z[0]

    uv, z = proj([0, 0, 0.1])  # straight in front
    np.testing.assert_allclose(uv, [319.5, 239.5], atol=1e-9)
    assert z == pytest.approx(2.0)
    uv_up, _ = proj([0, 0, 0.3])  # up in Blender world -> above the centre
    assert uv_up[1] < 239.5 and uv_up[0] == pytest.approx(319.5)
    uv_right, _ = proj([0.2, 0, 0.1])  # Blender +x is the camera's right
    assert uv_right[0] > 319.5
    # the camera sits in front of the face: FLAME (0, 0.1, 2), looking along FLAME -z
    np.testing.assert_allclose(cam.center, [0, 0.1, 2], atol=1e-12)
    np.testing.assert_allclose(cam.forward, [0, 0, -1], atol=1e-12)
    # and the frontal orbit camera maps to that Blender orientation
    bl = blender_from_opencv(orbit_camera(0, 0, center=(0, 0.1, 0), distance=2.0))
    np.testing.assert_allclose(bl.matrix_world, M, atol=1e-12)
