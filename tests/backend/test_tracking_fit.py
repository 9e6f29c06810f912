"""FLAME fit to one reference image: accuracy on the astronaut, canonical pose, track folder, errors."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from backend.cameras import Camera, intrinsics, look_at
from backend.errors import MVP4DError
from backend.flame.io import load_flame
from backend.flame.lbs import Flame, FlameParams
from backend.protocol import FLAME_PARAM_KEYS, CameraSpec
from backend.tracking import (
    TRACK_FILES,
    absorb_head_pose,
    default_reference_image,
    fit_flame,
    load_track,
    track_from_params,
    track_image,
)
from backend.tracking.landmarks import NUM_LANDMARKS, FaceLandmarks


@pytest.fixture(scope="module")
def flame() -> Flame:
    return Flame(load_flame("toy"))


@pytest.fixture(scope="module")
def astronaut_track(tmp_path_factory, flame):
    """The astronaut tracked with the toy head, written to a track folder (shared by the tests)."""
    out = tmp_path_factory.mktemp("astronaut_track")
    warnings: list[str] = []
    t0 = time.perf_counter()
    result = track_image(default_reference_image(), flame_source="toy", out_dir=out, warn=warnings.append)
    seconds = time.perf_counter() - t0
    print(
        f"\ntrack(astronaut, toy): {seconds:.2f} s, mean landmark error {result.mean_error_px:.2f} px = "
        f"{100 * result.relative_error:.2f} % of the {result.face_box_size_px:.0f} px face box; info {result.info}"
    )
    return result, out, warnings, seconds


def _project(flame: Flame, params: FlameParams, camera: Camera) -> np.ndarray:
    with torch.no_grad():
        lm = flame(params).landmarks[0].double().numpy()
    uv, z = camera.project(lm)
    assert (z > 0).all()
    return uv


# ---------------------------------------------------------------------------------------------
# The astronaut
# ---------------------------------------------------------------------------------------------


def test_astronaut_fit_is_accurate(astronaut_track, flame):
    res, _, warnings, _seconds = astronaut_track
    assert warnings == []  # one face, a good fit
    L = len(res.landmark_ids)
    assert res.landmarks_px.shape == (L, 2) and res.projected_px.shape == (L, 2)
    np.testing.assert_allclose(res.landmarks_px, res.face.points[res.landmark_ids])
    err = np.linalg.norm(res.projected_px - res.landmarks_px, axis=1)
    assert res.mean_error_px == pytest.approx(err.mean())
    assert res.face_box_size_px == pytest.approx(res.face.box_size)
    assert res.relative_error == pytest.approx(res.mean_error_px / res.face_box_size_px)
    assert res.relative_error < 0.03, f"mean landmark error {100 * res.relative_error:.2f} % of the face box"
    # projected_px is what it claims: the fitted head's landmarks seen through the fitted camera
    np.testing.assert_allclose(_project(flame, res.params, res.camera), res.projected_px, atol=1e-3)


def test_astronaut_result_is_canonical(astronaut_track, flame):
    res, _, _, _ = astronaut_track
    p = res.params
    assert p.num_frames == 1
    assert torch.count_nonzero(p.global_rot) == 0 and torch.count_nonzero(p.transl) == 0
    assert torch.count_nonzero(p.neck_pose) == 0 and torch.count_nonzero(p.eye_pose) == 0
    # re-evaluating FLAME at identity pose through the returned camera gives the fitted projections
    uv = _project(flame, p, res.camera)
    np.testing.assert_allclose(uv, res.projected_px, atol=1e-3)
    cam = res.camera
    assert (cam.width, cam.height) == (512, 512) and cam.name == "reference"
    assert cam.cx == pytest.approx(255.5) and cam.cy == pytest.approx(255.5) and cam.fx == pytest.approx(cam.fy)
    # the camera sits on the +z side of the head, looking back at it, image up ~ world +y
    assert cam.center[2] > 0.2
    assert cam.forward @ np.array([0.0, 0.0, -1.0]) > 0.85
    assert -cam.R[1] @ np.array([0.0, 1.0, 0.0]) > 0.85
    assert 0.2 < np.linalg.norm(cam.center) < 10.0


def test_astronaut_track_folder(astronaut_track, flame):
    res, out, _, _ = astronaut_track
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(TRACK_FILES.values())  # every file, and no temporary leftovers
    with np.load(out / "flame_params.npz") as npz:
        assert set(npz.files) == set(FLAME_PARAM_KEYS)
        assert npz["shape"].shape == (flame.num_shape,) and npz["expr"].shape == (flame.num_expr,)
        assert npz["jaw_pose"].shape == (3,) and npz["eye_pose"].shape == (6,)
        assert not npz["global_rot"].any() and not npz["transl"].any()
    spec = CameraSpec.from_json(json.loads((out / "camera.json").read_text()), "camera.json")
    np.testing.assert_allclose(np.array(spec.world_to_cam), res.camera.world_to_cam)
    doc = json.loads((out / "landmarks.json").read_text())
    assert doc["mean_error_px"] == pytest.approx(res.mean_error_px)
    assert len(doc["detected_px"]) == len(doc["projected_px"]) == len(doc["landmark_ids"])
    assert len(doc["face"]["points"]) == NUM_LANDMARKS

    back = load_track(out, flame_source="toy")
    for key in ("shape", "expr", "jaw_pose", "global_rot", "transl"):
        torch.testing.assert_close(getattr(back.params, key), getattr(res.params, key))
    np.testing.assert_allclose(back.camera.K, res.camera.K)
    np.testing.assert_allclose(back.camera.world_to_cam, res.camera.world_to_cam)
    np.testing.assert_allclose(back.projected_px, res.projected_px, atol=1e-3)
    assert back.relative_error == pytest.approx(res.relative_error)
    np.testing.assert_array_equal(back.matted, res.matted)
    assert np.abs(back.alpha - res.alpha).max() <= 0.5 / 255 + 1e-6
    assert back.matted[:8, :8].min() >= 250  # background on white
    np.testing.assert_allclose(_project(flame, back.params, back.camera), res.projected_px, atol=2e-3)


def test_track_from_params_round_trip_and_pose_absorption(astronaut_track, flame, tmp_path):
    res, out, _, _ = astronaut_track
    # the folder's own parameters: nothing to absorb, same camera
    again = track_from_params(out / "flame_params.npz", out / "camera.json", flame_source="toy")
    np.testing.assert_allclose(again.camera.world_to_cam, res.camera.world_to_cam, atol=1e-9)
    assert again.landmarks_px is None and again.mean_error_px is None

    # a posed rig (Blender): the head rotated and moved, the camera placed to look at it
    posed = FlameParams.zeros(flame, 1)
    posed.shape = res.params.shape.clone()
    posed.expr = res.params.expr.clone()
    posed.jaw_pose = torch.tensor([[0.15, 0.0, 0.0]])
    posed.global_rot = torch.tensor([[0.1, 0.5, -0.2]])
    posed.transl = torch.tensor([[0.05, -0.02, 0.3]])
    posed.save_npz(tmp_path / "posed.npz", frame=0)
    cam = Camera(K=intrinsics(1100.0, 640, 480), world_to_cam=look_at([0.3, 0.1, 1.2], [0.05, -0.02, 0.3]),
                 width=640, height=480, name="photo")
    (tmp_path / "cam.json").write_text(json.dumps(cam.to_spec().__dict__))
    image = np.full((480, 640, 3), 200, np.uint8)
    canon = track_from_params(tmp_path / "posed.npz", tmp_path / "cam.json", image=image, flame_source="toy",
                              out_dir=tmp_path / "track")
    assert torch.count_nonzero(canon.params.global_rot) == 0 and torch.count_nonzero(canon.params.transl) == 0
    with torch.no_grad():
        posed_v = flame(posed).vertices[0].double().numpy()
        canon_v = flame(canon.params).vertices[0].double().numpy()
    np.testing.assert_allclose(canon.camera.project(canon_v)[0], cam.project(posed_v)[0], atol=1e-3)
    assert sorted(p.name for p in (tmp_path / "track").iterdir()) == sorted(
        ["flame_params.npz", "camera.json", "matted.png", "alpha.png"]
    )
    back = load_track(tmp_path / "track")
    np.testing.assert_allclose(back.camera.world_to_cam, canon.camera.world_to_cam)
    # absorb_head_pose is the same operation in memory
    p2, c2 = absorb_head_pose(flame, posed, cam)
    np.testing.assert_allclose(c2.world_to_cam, canon.camera.world_to_cam, atol=1e-9)


def test_track_from_params_errors(tmp_path, flame):
    with pytest.raises(MVP4DError) as ei:
        track_from_params(tmp_path / "missing.npz", tmp_path / "missing.json")
    assert ei.value.code == "BAD_INPUT"
    FlameParams.zeros(flame, 1).save_npz(tmp_path / "p.npz", frame=0)
    (tmp_path / "cam.json").write_text("{not json")
    with pytest.raises(MVP4DError) as ei:
        track_from_params(tmp_path / "p.npz", tmp_path / "cam.json")
    assert ei.value.code == "BAD_INPUT" and "cam.json" in ei.value.message


# ---------------------------------------------------------------------------------------------
# The fitter on synthetic detections (known answer, no MediaPipe)
# ---------------------------------------------------------------------------------------------


def _synthetic_landmarks(flame: Flame, params: FlameParams, camera: Camera) -> FaceLandmarks:
    ids = flame.landmark_ids.numpy()
    uv = _project(flame, params, camera)
    pts = np.repeat(uv.mean(0, keepdims=True), NUM_LANDMARKS, axis=0)
    pts[ids] = uv
    box = (float(uv[:, 0].min()), float(uv[:, 1].min()), float(uv[:, 0].max()), float(uv[:, 1].max()))
    return FaceLandmarks(points=pts, z=np.zeros(NUM_LANDMARKS), box=box, image_size=(camera.width, camera.height))


def test_fit_recovers_a_synthetic_head(flame):
    g = torch.Generator().manual_seed(0)
    truth = FlameParams.zeros(flame, 1)
    truth.shape = 0.8 * torch.randn(flame.num_shape, generator=g)
    truth.expr = 0.3 * torch.randn(1, flame.num_expr, generator=g)
    truth.jaw_pose = torch.tensor([[0.12, 0.0, 0.0]])
    cam = Camera(K=intrinsics(1000.0, 480, 400), world_to_cam=look_at([0.25, 0.12, 0.9], [0.0, 0.0, 0.0]),
                 width=480, height=400)
    face = _synthetic_landmarks(flame, truth, cam)
    res = fit_flame(flame, face, 480, 400)
    assert res.relative_error < 0.005, res.relative_error
    # the fitted camera looks from the same direction
    assert res.camera.forward @ cam.forward > np.cos(np.radians(5.0))


def test_fit_needs_a_landmark_embedding(flame):
    model = load_flame("toy").copy()
    model.landmark_faces = model.landmark_bary = model.landmark_ids = None
    bare = Flame(model)
    face = FaceLandmarks(points=np.zeros((NUM_LANDMARKS, 2)), z=np.zeros(NUM_LANDMARKS), box=(0, 0, 1, 1),
                         image_size=(64, 64))
    with pytest.raises(MVP4DError) as ei:
        fit_flame(bare, face, 64, 64)
    assert ei.value.code == "FLAME_INVALID"


# ---------------------------------------------------------------------------------------------
# track_image errors and warnings
# ---------------------------------------------------------------------------------------------


def test_track_image_errors(tmp_path):
    text = tmp_path / "photo.jpg"
    text.write_text("hello")
    with pytest.raises(MVP4DError) as ei:
        track_image(text)
    assert ei.value.code == "BAD_INPUT" and str(text) in ei.value.message
    with pytest.raises(MVP4DError) as ei:
        track_image(tmp_path / "nope.png")
    assert ei.value.code == "BAD_INPUT"
    with pytest.raises(MVP4DError) as ei:
        track_image(np.full((256, 256, 3), 128, np.uint8), out_dir=tmp_path / "out")
    assert ei.value.code == "NO_FACE"
    assert not (tmp_path / "out").exists()  # nothing written for a failed track


def two_faces_image(astronaut: np.ndarray) -> np.ndarray:
    """The astronaut's head twice on a white 512x256 canvas: full size left, 0.75x right
    (the same picture as test_tracking_inputs.py, where MediaPipe is checked to find both)."""
    import cv2

    crop = astronaut[20:240, 110:340]
    small = cv2.resize(crop, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)
    canvas = np.full((256, 512, 3), 255, np.uint8)
    y = (256 - crop.shape[0]) // 2
    canvas[y : y + crop.shape[0], 10 : 10 + crop.shape[1]] = crop
    y = (256 - small.shape[0]) // 2
    canvas[y : y + small.shape[0], 502 - small.shape[1] : 502] = small
    return canvas


def test_track_image_two_faces_warns_and_uses_largest():
    warnings: list[str] = []
    res = track_image(two_faces_image(default_reference_image()), warn=warnings.append,
                      fit_options={"steps": 60, "yaw_guesses": (0.0,)})
    assert warnings[0] == "found 2 faces; using the largest"
    assert res.face.center[0] < 256
    assert res.relative_error < 0.05
