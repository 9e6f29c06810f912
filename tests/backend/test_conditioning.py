"""Face crop and conditioning maps (backend/conditioning) on the toy head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.cameras import Camera, intrinsics, look_at, orbit_camera
from backend.conditioning import (
    CHANNEL_SLICES,
    CHANNELS,
    NUM_CHANNELS,
    canonical_coordinates,
    crop_camera,
    crop_image,
    decode_pose,
    face_crop_boxes,
    head_boxes,
    head_geometry,
    pose_encoding,
    reference_conditioning,
    smooth_boxes,
    video_conditioning,
    visualize,
)
from backend.errors import MVP4DError
from backend.flame import Flame, FlameParams, load_flame

S = CHANNEL_SLICES
GEOM = [S["pose_x"].start, S["expression"].stop]  # pose + expression channel range


@pytest.fixture(scope="module")
def model():
    return load_flame("toy")


@pytest.fixture(scope="module")
def flame(model):
    return Flame(model)


def _latent_pixel(camera: Camera, point, h: int, w: int) -> tuple[int, int]:
    """(row, col) of the latent pixel where a world point projects."""
    uv, _ = camera.scaled(w, h).project(np.asarray(point, dtype=np.float64)[None])
    return int(round(uv[0, 1])), int(round(uv[0, 0]))


def _landmark(model, flame_out, mp_id: int, frame: int = 0) -> np.ndarray:
    i = int(np.nonzero(model.landmark_ids == mp_id)[0][0])
    return flame_out.landmarks[frame, i].numpy()


# --------------------------------------------------------------------------------------------
# channel table and shapes
# --------------------------------------------------------------------------------------------


def test_channel_table_is_contiguous_and_unique():
    names = [c[0] for c in CHANNELS]
    assert len(set(names)) == len(names)
    assert CHANNELS[0][1] == 0
    for (_, _, stop, _), (_, start, _, _) in zip(CHANNELS, CHANNELS[1:]):
        assert stop == start
    assert CHANNELS[-1][2] == NUM_CHANNELS == 59
    assert all(stop > start and desc for _, start, stop, desc in CHANNELS)
    assert S["pose_z"].stop == 42 and S["motion_3"].stop - S["motion_1"].start == 6


def test_output_shapes_and_input_checks(flame):
    cam = orbit_camera(0, 0, focal_px=300, resolution=128)
    ref = reference_conditioning(flame, FlameParams.zeros(flame, 1), cam, np.ones((128, 128)))
    assert ref.shape == (NUM_CHANNELS, 16, 16) and ref.dtype == torch.float32
    vid = video_conditioning(flame, FlameParams.zeros(flame, 9), cam, cam)
    assert vid.shape == (3, NUM_CHANNELS, 16, 16)
    with pytest.raises(MVP4DError):
        video_conditioning(flame, FlameParams.zeros(flame, 8), cam, cam)  # not 1 + 4k frames
    with pytest.raises(MVP4DError):
        reference_conditioning(flame, FlameParams.zeros(flame, 2), cam)
    with pytest.raises(MVP4DError):
        reference_conditioning(flame, FlameParams.zeros(flame, 1), orbit_camera(0, 0, resolution=100))
    with pytest.raises(MVP4DError):
        video_conditioning(flame, FlameParams.zeros(flame, 5), cam, cam, reference_frames=[2])
    img = visualize(vid)
    assert img.dtype == np.uint8 and img.shape == (3 * 16 * 4, 6 * 16 * 4, 3)


# --------------------------------------------------------------------------------------------
# rays
# --------------------------------------------------------------------------------------------


def test_ray_maps_of_the_reference_camera(flame):
    ref = orbit_camera(0, 0, focal_px=400, resolution=136)  # latent 17 x 17: a centre pixel exists
    cond = reference_conditioning(flame, FlameParams.zeros(flame, 1), ref)
    d = cond[S["ray_direction"]]
    assert torch.allclose(d[:, 8, 8], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    assert torch.allclose(d.norm(dim=0), torch.ones(17, 17), atol=1e-5)
    assert (d[0, :, 9:] > 0).all() and (d[1, 9:, :] > 0).all()  # +x right, +y down
    assert cond[S["ray_origin"]].abs().max() == 0


def test_ray_origin_of_a_moved_camera(flame):
    K = intrinsics(300.0, 128, 128)
    ref = Camera(K=K, world_to_cam=look_at((0, 0, 1.0), (0, 0, 0)), width=128, height=128)
    moved = ref.world_to_cam.copy()
    moved[:3, 3] = -ref.R @ np.array([0.1, 0.05, 1.0])  # same rotation, centre moved by (0.1, 0.05, 0)
    cam = Camera(K=K, world_to_cam=moved, width=128, height=128)
    cond = video_conditioning(flame, FlameParams.zeros(flame, 5), cam, ref)
    o = cond[:, S["ray_origin"]]
    expected = torch.tensor([0.1, -0.05, 0.0])  # reference camera axes: +y is world -y
    assert torch.allclose(o, expected[None, :, None, None].expand_as(o), atol=1e-6)
    # same rotation: the direction maps coincide with the reference camera's own
    ref_dirs = reference_conditioning(flame, FlameParams.zeros(flame, 1), ref)[S["ray_direction"]]
    assert torch.allclose(cond[0, S["ray_direction"]], ref_dirs, atol=1e-6)
    # a rotated view: its central ray is its forward axis expressed in the reference frame
    side = orbit_camera(30, 10, focal_px=400, resolution=136)
    front = orbit_camera(0, 0, focal_px=400, resolution=136)
    c = video_conditioning(flame, FlameParams.zeros(flame, 1), side, front)
    expected = torch.as_tensor(front.R @ side.forward, dtype=torch.float32)
    assert torch.allclose(c[0, S["ray_direction"], 8, 8], expected, atol=1e-5)


# --------------------------------------------------------------------------------------------
# pose and expression maps
# --------------------------------------------------------------------------------------------


def test_pose_encoding_layout():
    x = torch.tensor([0.3, -0.2, 0.5])
    e = pose_encoding(x)
    assert e.shape == (42,)
    for a in range(3):
        for k in range(7):
            assert e[14 * a + k] == pytest.approx(np.sin(2**k * float(x[a])), abs=1e-6)
            assert e[14 * a + 7 + k] == pytest.approx(np.cos(2**k * float(x[a])), abs=1e-6)


def test_pose_map_background_and_nose_tip(flame, model):
    cam = orbit_camera(0, 0, focal_px=1200, resolution=512)  # latent 64 x 64, render 128 x 128
    cond = reference_conditioning(flame, FlameParams.zeros(flame, 1), cam)
    # background: latent pixels whose 2 x 2 render block no ray of the head covers are exactly 0
    from backend.render import rasterize

    rc = cam.scaled(128, 128)
    frags = rasterize(flame.v_template[None], flame.faces, torch.as_tensor(rc.world_to_cam[None]).float(),
                      torch.as_tensor(rc.K[None]).float(), 128, 128)
    head_faces = torch.as_tensor(model.head_vertex_mask)[flame.faces].any(1)
    hit = (frags.mask & head_faces[frags.face_id.clamp(min=0)]).float()[None]
    covered = torch.nn.functional.max_pool2d(hit, 2)[0, 0] > 0
    full = -torch.nn.functional.max_pool2d(-hit, 2)[0, 0] > 0
    geom = cond[GEOM[0] : GEOM[1]]
    assert (~covered).sum() > 1000 and full.sum() > 500
    assert geom[:, ~covered].abs().max() == 0
    assert (geom[:42, full].abs().sum(0) > 0).all()  # head pixels carry the encoding
    # nose tip: the most protruding template vertex
    nose = int(np.argmax(model.v_template[:, 2]))
    r, c = _latent_pixel(cam, model.v_template[nose], 64, 64)
    decoded = decode_pose(cond)[:, r, c]
    target = canonical_coordinates(flame)[nose]
    assert torch.allclose(decoded, target, atol=0.06), (decoded, target)
    assert canonical_coordinates(flame).abs().max() == pytest.approx(1.0)


def test_render_mask_drops_faces_outside_the_head(flame, model):
    cam = orbit_camera(0, 0, focal_px=600, resolution=256)
    no_mask = model.copy()
    no_mask.head_vertex_mask = None
    a = reference_conditioning(flame, FlameParams.zeros(flame, 1), cam)
    b = reference_conditioning(Flame(no_mask), FlameParams.zeros(flame, 1), cam)
    ca, cb = a[:42].abs().sum(0) > 0, b[:42].abs().sum(0) > 0
    assert (ca & ~cb).sum() == 0 and (cb & ~ca).sum() > 5  # the lower neck is masked out


def test_expression_map(flame, model):
    cam = orbit_camera(0, 0, focal_px=600, resolution=256)
    neutral = reference_conditioning(flame, FlameParams.zeros(flame, 1), cam)
    assert neutral[S["expression"]].abs().max() < 1e-4
    p = FlameParams.zeros(flame, 1)
    p.jaw_pose[0, 0] = 0.3
    cond = reference_conditioning(flame, p, cam)
    out = flame(p)
    e = cond[S["expression"]]
    for mp_id in (17, 152):  # lower lip, chin
        r, c = _latent_pixel(cam, _landmark(model, out, mp_id), 32, 32)
        assert e[:, r, c].norm() > 1.0, mp_id
    r, c = _latent_pixel(cam, _landmark(model, out, 151), 32, 32)  # forehead
    assert e[:, r, c].norm() < 0.05
    # offsets live in the canonical head frame: global rotation/translation do not change them
    q = FlameParams.zeros(flame, 1)
    q.jaw_pose[0, 0] = 0.3
    q.global_rot[0] = torch.tensor([0.1, 0.4, -0.2])
    q.transl[0] = torch.tensor([0.01, -0.02, 0.03])
    assert torch.allclose(head_geometry(flame, q).offsets, head_geometry(flame, p).offsets, atol=1e-5)


# --------------------------------------------------------------------------------------------
# motion and masks
# --------------------------------------------------------------------------------------------


def test_motion_maps(flame, model):
    cam = orbit_camera(0, 0, distance=2.0, focal_px=1200, resolution=256)  # latent 32
    motion = slice(S["motion_1"].start, S["motion_3"].stop)
    static = video_conditioning(flame, FlameParams.zeros(flame, 9), cam, cam)
    assert static[:, motion].abs().max() == 0
    F, dx = 9, 0.002
    p = FlameParams.zeros(flame, F)
    p.transl[:, 0] = dx * torch.arange(F, dtype=torch.float32)
    cond = video_conditioning(flame, p, cam, cam)
    assert cond[0, motion].abs().max() == 0  # latent frame 0 has no dropped frames
    out = flame(p)
    nose = int(np.argmax(model.v_template[:, 2]))
    for k in (1, 2):
        pos = out.vertices[4 * k, nose].numpy()
        r, c = _latent_pixel(cam, pos, 32, 32)
        z = float((cam.R @ pos + cam.t)[2])
        for j, name in enumerate(("motion_1", "motion_2", "motion_3"), start=1):
            du = cam.fx * (-(4 - j) * dx) / z / cam.height  # dropped frame 4k-4+j minus retained 4k
            m = cond[k, S[name], r, c]
            assert float(m[0]) == pytest.approx(du, rel=0.03), (k, name)
            assert abs(float(m[1])) < 0.02 * abs(du)
        covered = cond[k, :42].abs().sum(0) > 0
        assert (cond[k, S["motion_1"].start, covered] < 0).all()


def test_reference_and_outcrop_masks(flame):
    cam = orbit_camera(0, 0, focal_px=300, resolution=128)
    vid = video_conditioning(flame, FlameParams.zeros(flame, 13), cam, cam, reference_frames=[0, 2])
    b = vid[:, S["reference_mask"]]
    assert torch.equal(b[:, 0, 0, 0], torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert torch.equal(b, b[:, :, :1, :1].expand_as(b))
    assert (vid[:, S["outcrop_mask"]] == 1).all()
    oc = np.ones((128, 128), np.float32)
    oc[:, :36] = 0.0  # 4.5 latent columns of padding
    ref = reference_conditioning(flame, FlameParams.zeros(flame, 1), cam, oc)
    m = ref[S["outcrop_mask"]][0]
    assert (m[:, :4] == 0).all() and (m[:, 4] == 0.5).all() and (m[:, 5:] == 1).all()
    assert (ref[S["reference_mask"]] == 1).all()
    assert ref[S["motion_1"].start :].abs().max() == 0


# --------------------------------------------------------------------------------------------
# crop
# --------------------------------------------------------------------------------------------


def test_head_boxes_are_25_percent_larger():
    uv = np.array([[[10.0, 20.0], [50.0, 40.0], [30.0, 25.0], [500.0, 500.0]]])
    mask = np.array([True, True, True, False])
    box = head_boxes(uv, mask)
    assert box.shape == (1, 3)
    x0, y0, size = box[0]
    assert size == pytest.approx(1.25 * 40.0)
    assert x0 + (size - 1) / 2 == pytest.approx(30.0) and y0 + (size - 1) / 2 == pytest.approx(30.0)
    assert head_boxes(uv)[0, 2] == pytest.approx(1.25 * 490.0)


def test_face_crop_boxes_on_the_toy_head(flame, model):
    cam = orbit_camera(0, 0, focal_px=600, resolution=256)
    verts = flame(FlameParams.zeros(flame, 3)).vertices
    boxes = face_crop_boxes(cam, verts, model.head_vertex_mask)
    uv, _ = cam.project(verts[0].numpy()[model.head_vertex_mask])
    ext = (uv.max(0) - uv.min(0)).max()
    assert np.allclose(boxes[:, 2], 1.25 * ext)
    c = crop_camera(cam, boxes[0], 512)
    assert c.width == 512 and np.allclose(c.K, cam.cropped(*boxes[0], 512).K)


def test_smooth_boxes():
    rng = np.random.default_rng(0)
    T = 60
    const = np.tile([[40.0, 30.0, 200.0]], (T, 1))
    assert np.allclose(smooth_boxes(const), const, atol=1e-9)
    assert np.allclose(smooth_boxes(const[:1]), const[:1])
    noisy = const.copy()
    noisy[:, :2] += rng.normal(0.0, 3.0, (T, 2))
    sm = smooth_boxes(noisy, sigma_frames=2.0)
    centre = lambda b: b[:, :2] + 0.5 * (b[:, 2:3] - 1)  # noqa: E731
    assert centre(sm).std(0).max() < 0.5 * centre(noisy).std(0).min()
    assert np.allclose(sm[:, 2], 200.0)


@pytest.mark.parametrize("box, out", [((-50.0, -50.0, 200.0), 100), ((-10.0, -10.0, 50.0), 100)])
def test_crop_pads_white_and_marks_padding(box, out):
    img = np.zeros((100, 100, 3), np.uint8)
    img[:] = (10, 20, 30)
    crop, mask = crop_image(img, box, out)
    assert crop.shape == (out, out, 3) and crop.dtype == np.uint8 and mask.dtype == np.float32
    assert (crop[:5, :5] == 255).all() and (mask[:5, :5] == 0).all()
    inside = (int(out * 0.6), int(out * 0.6))
    assert tuple(crop[inside]) == (10, 20, 30) and mask[inside] == 1.0


def _blocks(n: int = 256, block: int = 32) -> np.ndarray:
    rng = np.random.default_rng(1)
    colours = rng.integers(0, 256, (n // block, n // block, 3), dtype=np.uint8)
    return np.repeat(np.repeat(colours, block, axis=0), block, axis=1)


@pytest.mark.parametrize("box, out", [((-20.3, 10.7, 230.6), 128), ((40.25, 33.5, 150.0), 384), ((16, 16, 224), 112)])
def test_crop_matches_cropped_camera(flame, box, out):
    img = _blocks()
    cam = orbit_camera(15, 5, focal_px=600, resolution=256)
    pts = flame.v_template.numpy()[::7]
    uv, _ = cam.project(pts)
    px = np.rint(uv).astype(int)
    frac = np.mod(uv, 32)
    ok = ((px >= 0) & (px < 256)).all(1) & ((frac > 5) & (frac < 27)).all(1)  # away from block edges
    crop, _ = crop_image(img, box, out)
    uv2, _ = cam.cropped(*box, out).project(pts)
    px2 = np.rint(uv2).astype(int)
    ok &= ((px2 >= 0) & (px2 < out)).all(1)
    assert ok.sum() > 50
    a = img[px[ok, 1], px[ok, 0]].astype(int)
    b = crop[px2[ok, 1], px2[ok, 0]].astype(int)
    assert np.abs(a - b).max() <= 1
