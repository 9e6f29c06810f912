"""Per-frame training crops (paper S2.1): every frame is cropped around the projected head with the
inference crop's temporal smoothing, with the per-frame intrinsics that follow; conditioning uses them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.cameras import orbit_camera
from backend.conditioning.crop import CROP_SMOOTHING_FRAMES, head_boxes
from backend.conditioning.maps import head_geometry, video_conditioning
from backend.conditioning.per_frame import video_conditioning_per_frame
from backend.flame import Flame, FlameParams, load_flame
from backend.training.data import TrainingDataset
from backend.training.frames import write_dataset_json, write_sequence
from backend.training.objective import prepare_sample
from backend.training.curriculum import SampleMode
from backend.training.synthetic import random_identity, render_sequence

F = 13
RES = 96
CROP = 64


@pytest.fixture(scope="module")
def flame():
    return Flame(load_flame("toy"))


@pytest.fixture(scope="module")
def moving_head(flame, tmp_path_factory):
    """One camera, the head walking sideways and towards it (its image grows ~20 %) over 13 frames."""
    root = tmp_path_factory.mktemp("moving")
    params = FlameParams.zeros(flame, F)
    s = torch.linspace(0, 1, F)
    params.transl[:, 0] = 0.06 * s
    params.transl[:, 1] = -0.03 * s
    params.transl[:, 2] = 0.25 * s
    params.global_rot[:, 1] = 0.2 * s
    cam = orbit_camera(0, 0, center=(0, 0, 0), distance=1.6, focal_px=1.3 * RES, resolution=RES, name="cam00")
    tex = random_identity(np.random.default_rng(0), flame.num_shape)["texture"]
    images, mattes = render_sequence(flame, params, [cam], tex,
                                     np.array([0.0, 0.3, 1.0]), 0.6, supersample=1)
    write_sequence(root / "walk", ["cam00"], [cam], params, images, mattes, fps=25.0, identity="walk",
                   modality="monocular-video")
    write_dataset_json(root)
    return TrainingDataset(root, flame=flame)


def _head_box_sizes(ds: TrainingDataset, item) -> np.ndarray:
    """Tight head box size (pixels of the D × D crop) per frame, from each frame's crop camera."""
    with torch.no_grad():
        verts = ds.flame(item.params).vertices.double().numpy()[:, ds._head_mask]
    sizes = []
    for t, cam in enumerate(item.view_cameras(0)):
        uv, _ = cam.project(verts[t])
        sizes.append(head_boxes(uv[None], None, 1.0)[0, 2])
    return np.array(sizes)


def _silhouette_sizes(item) -> np.ndarray:
    sizes = []
    for im in item.images[0]:
        ys, xs = np.nonzero((im < 250).any(-1))
        sizes.append(max(xs.max() - xs.min(), ys.max() - ys.min()) + 1)
    return np.array(sizes, dtype=float)


def test_moving_head_crops_keep_the_head_size(moving_head):
    ds = moving_head
    item = ds.load(0, [0], list(range(F)), 0, 0, CROP)
    assert item.frame_cameras is not None and len(item.view_cameras(0)) == F
    sizes = _head_box_sizes(ds, item)
    assert (sizes.max() - sizes.min()) / sizes.mean() < 0.05
    sil = _silhouette_sizes(item)
    assert (sil.max() - sil.min()) / sil.mean() < 0.08  # the rendered pixels agree (±1 px of 64)
    # per-frame intrinsics: the crop cameras differ, the pose is the view's
    Ks = np.stack([c.K for c in item.view_cameras(0)])
    assert np.ptp(Ks[:, 0, 0]) > 0.1 * Ks[0, 0, 0]
    assert all(np.allclose(c.world_to_cam, item.cameras[0].world_to_cam) for c in item.view_cameras(0))
    # the old one-box-per-clip crop lets the head shrink and drift
    fixed = ds.load(0, [0], list(range(F)), 0, 0, CROP, per_frame_crops=False)
    old = _head_box_sizes(ds, fixed)
    assert (old.max() - old.min()) / old.mean() > 0.15


def test_smoothing_is_the_inference_crops(moving_head, monkeypatch):
    import backend.training.data as data

    seen = []
    real = data.face_crop_boxes
    monkeypatch.setattr(data, "face_crop_boxes", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    moving_head.load(0, [0], list(range(F)), 0, 0, CROP)
    moving_head.load(0, [0], list(range(0, F, 2)), 0, 0, CROP)  # sampled every 2nd frame
    assert seen[0]["sigma_frames"] == CROP_SMOOTHING_FRAMES and seen[1]["sigma_frames"] == CROP_SMOOTHING_FRAMES / 2


def test_per_frame_conditioning(flame, moving_head):
    params = FlameParams.zeros(flame, 9)
    params.jaw_pose[:, 0] = torch.linspace(0, 0.3, 9)
    params.transl[:, 0] = torch.linspace(0, 0.03, 9)
    geo = head_geometry(flame, params)
    cam = orbit_camera(20, 5, distance=1.0, focal_px=100, resolution=32)
    ref = orbit_camera(0, 0, distance=1.0, focal_px=100, resolution=32)
    one = video_conditioning(flame, params, cam, ref, reference_frames=[0], latent_downsample=4, geometry=geo)
    per = video_conditioning_per_frame(flame, params, [cam] * 9, ref, reference_frames=[0], latent_downsample=4,
                                       geometry=geo)
    torch.testing.assert_close(per, one)  # the same camera in every frame: identical
    moved = [cam.cropped(2.0 * t, 0.0, 32.0, 32) for t in range(9)]
    per = video_conditioning_per_frame(flame, params, moved, ref, latent_downsample=4, geometry=geo)
    alone = video_conditioning(flame, params.frame(8), moved[8], ref, latent_downsample=4)
    torch.testing.assert_close(per[2, :45], alone[0, :45])  # latent frame 2 sees frame 8 through frame 8's crop
    # the trainer's sample uses the item's per-frame cameras
    item = moving_head.load(0, [0], list(range(9)), 0, 12, 32)
    s = prepare_sample(moving_head.flame, item, SampleMode(mode=1, reference_views=0, context_latent_frames=0,
                                                           dropout=False), latent_downsample=8)
    assert s["conditioning"].shape[:2] == (1, 3)
