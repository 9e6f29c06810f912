"""Pieces of the avatar fit that need no corpus: losses, U-Net, chart, triangulation, culling, densify."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from backend.avatar import losses
from backend.avatar.binding import LocalGaussians, local_to_world
from backend.avatar.data import facing_faces
from backend.avatar.densify import DensifyState, DensifyStrategy, GaussianStore, refine
from backend.avatar.settings import FIT_PRESETS, FitSettings, preset_settings
from backend.avatar.sfm import fundamental, reprojection_errors, triangulate_dlt
from backend.avatar.unet import DeformUNet, face_chart, sample_chart, time_embedding
from backend.cameras import orbit_camera
from backend.errors import MVP4DError
from backend.flame.lbs import axis_angle_to_matrix


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_matches_skimage(seed):
    rng = np.random.default_rng(seed)
    # a smooth image and a noisy, shifted copy: SSIM well inside (0, 1)
    y, x = np.mgrid[0:48, 0:56] / 16.0
    a = np.stack([0.5 + 0.4 * np.sin(x + c) * np.cos(y - c) for c in range(3)], -1)
    b = np.clip(np.roll(a, 1, axis=1) + 0.05 * rng.standard_normal(a.shape), 0, 1)
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1.0, channel_axis=-1)
    ours = float(losses.ssim(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)))
    assert 0.2 < ref < 0.99
    assert ours == pytest.approx(ref, abs=1e-3)
    assert float(losses.ssim(torch.tensor(a), torch.tensor(a))) == pytest.approx(1.0, abs=1e-6)


def _tet():
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]) * 0.1
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])  # outward, counter-clockwise
    return v, f


def test_velocity_losses_zero_when_static_positive_when_moving():
    v, f = _tet()
    local = LocalGaussians(torch.arange(4), torch.randn(4, 3) * 0.1, torch.randn(4, 4), torch.zeros(4, 3),
                           torch.zeros(4), torch.zeros(4, 1, 3))
    d = torch.randn(4, 3) * 0.01
    static = local_to_world(local, torch.stack([v, v]), f, detail_offsets=torch.stack([d, d]))
    assert float(losses.velocity_rotation_loss(static.quats[0], static.quats[1])) == pytest.approx(0.0, abs=1e-10)
    assert float(losses.velocity_deformation_loss(d, d)) == 0.0
    R = axis_angle_to_matrix(torch.tensor([0.0, 0.3, 0.0]))
    moving = local_to_world(local, torch.stack([v, v @ R.T]), f)
    rot = float(losses.velocity_rotation_loss(moving.quats[0], moving.quats[1], weight=1.0))
    assert rot == pytest.approx(0.3**2, rel=1e-4)  # every Gaussian turned by 0.3 rad
    assert float(losses.velocity_deformation_loss(d, d + 0.01, weight=1.0)) == pytest.approx(3 * 0.01**2, rel=1e-4)
    assert float(losses.velocity_deformation_loss(d, d + 0.01)) == pytest.approx(0.4 * 3e-4, rel=1e-4)


def test_regularisers_and_laplacian():
    assert float(losses.scale_loss(torch.log(torch.full((5, 3), 0.5)))) == 0.0
    assert float(losses.scale_loss(torch.log(torch.full((5, 3), 1.6)))) == pytest.approx(math.sqrt(3), rel=1e-5)
    assert float(losses.position_loss(torch.full((5, 3), 0.1))) == 0.0
    assert float(losses.position_loss(torch.tensor([[3.0, 0, 0]]))) == pytest.approx(2.0)
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    assert float(losses.laplacian_loss((2 * xx + yy)[None, None].repeat(1, 3, 1, 1))) == pytest.approx(0.0, abs=1e-9)
    assert float(losses.laplacian_loss((xx**2)[None, None])) == pytest.approx(4.0)


def test_triangulation_recovers_known_points():
    rng = np.random.default_rng(0)
    cams = [orbit_camera(a, e, distance=1.0, focal_px=400, resolution=128) for a, e in
            [(-30, 0), (-10, 10), (10, -5), (30, 5), (0, 20)]]
    pts = rng.uniform(-0.08, 0.08, (20, 3))
    for X in pts:
        uv = np.array([c.project(X[None])[0][0] for c in cams])
        got = triangulate_dlt(cams, uv)
        assert np.allclose(got, X, atol=1e-8)
        err, depth = reprojection_errors(cams, uv, got)
        assert err.max() < 1e-6 and (depth > 0).all()
        # half-pixel noise keeps it within a millimetre
        noisy = triangulate_dlt(cams, uv + rng.uniform(-0.5, 0.5, uv.shape))
        assert np.linalg.norm(noisy - X) < 3e-3  # 1 px is 2.5 mm at this focal length and distance
    # the epipolar constraint of the known cameras holds for true correspondences
    F_ = fundamental(cams[0], cams[1])
    xa, xb = cams[0].project(pts)[0], cams[1].project(pts)[0]
    resid = np.einsum("ni,ij,nj->n", np.c_[xb, np.ones(20)], F_, np.c_[xa, np.ones(20)])
    assert np.abs(resid).max() < 1e-9


def test_culling_drops_faces_never_facing_a_camera():
    v, f = _tet()
    v = v - v.mean(0)
    front = [orbit_camera(a, 0, distance=1.0, focal_px=100, resolution=32) for a in (-20, 0, 20)]
    keep = facing_faces(torch.stack([v, v]), f, front)
    normals = torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1)
    cen = v[f].mean(1)
    expect = [any(float(normals[i] @ (torch.tensor(c.center, dtype=torch.float32) - cen[i])) > 0 for c in front)
              for i in range(4)]
    assert keep.tolist() == expect
    assert not keep[0] and keep[3]  # the face turned away (-z) goes, the one towards +z stays
    # a camera behind the head brings the others back; moving the mesh in one frame counts too
    back = orbit_camera(180, 0, distance=1.0, focal_px=100, resolution=32)
    assert facing_faces(v[None], f, front + [back]).sum() > keep.sum()
    R = axis_angle_to_matrix(torch.tensor([0.0, math.pi, 0.0]))
    assert facing_faces(torch.stack([v, v @ R.T]), f, front).sum() > keep.sum()


def test_unet_starts_at_zero_and_learns():
    net = DeformUNet(resolution=16, channels=4, depth=2, num_frames=9)
    maps = net(torch.tensor([0, 4, 8]))
    assert maps.shape == (3, 3, 16, 16) and float(maps.detach().abs().max()) == 0.0
    coords = torch.rand(10, 2) * 2 - 1
    d = sample_chart(maps, coords)
    assert d.shape == (3, 10, 3) and float(d.detach().abs().max()) == 0.0
    (sample_chart(net(torch.tensor([1])), coords) - 1.0).square().mean().backward()
    assert float(net.out.weight.grad.abs().sum()) > 0  # the zero layer receives gradient
    emb = time_embedding(torch.tensor([0, 1, 8]), 9)
    assert emb.shape == (3, 8) and torch.allclose(emb[0, 4:], torch.ones(4))


def test_chart_is_deterministic_and_in_range():
    from backend.flame import build_toy_head

    m = build_toy_head()
    a = face_chart(m.v_template, m.faces, m.head_mask())
    b = face_chart(m.v_template.copy(), m.faces, m.head_mask())
    assert torch.equal(a, b) and a.shape == (len(m.faces), 2)
    assert float(a.abs().max()) <= 1.0
    # the face (looking along +z) sits at the chart's centre column, the back at its edges
    cen = m.v_template[m.faces].mean(1)
    front, backside = cen[:, 2] > np.percentile(cen[:, 2], 95), cen[:, 2] < np.percentile(cen[:, 2], 5)
    assert float(a[torch.from_numpy(front), 0].abs().mean()) < 0.25
    assert float(a[torch.from_numpy(backside), 0].abs().mean()) > 0.75


def _store(n=6):
    t = {"local_position": torch.zeros(n, 3), "local_rotation": torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
         "log_scale": torch.zeros(n, 3), "opacity_logit": torch.zeros(n), "sh_dc": torch.zeros(n, 1, 3),
         "sh_rest": torch.zeros(n, 0, 3)}
    lrs = {k: 0.01 for k in t}
    return GaussianStore(t, torch.arange(n), lrs)


def test_densify_clone_split_prune_keep_optimizer_state_aligned():
    store = _store(6)
    loss = sum((p**2).sum() + p.sum() for p in store.params.values())
    loss.backward()
    store.step()
    st = DensifyState(6)
    st.grad2d = torch.tensor([1.0, 0, 1.0, 0, 0, 0])
    st.count = torch.ones(6)
    world_scale = torch.tensor([0.001, 0.001, 0.5, 0.001, 0.001, 0.001])  # #2 is big -> split
    with torch.no_grad():
        store.params["opacity_logit"][5] = -10.0  # transparent -> pruned
    strat = DensifyStrategy(refine_start=1, refine_stop=100, refine_every=1, reset_every=0, grow_grad2d=0.1,
                            grow_scale3d=0.05, prune_scale3d=10.0)
    stats = refine(store, st, strat, 1, world_scale, 1.0, torch.Generator().manual_seed(0))
    assert stats == {"cloned": 1, "split": 1, "pruned": 2, "reset": 0}  # pruned: the split original + #5
    assert len(store) == 6 + 1 + 2 - 2
    assert store.parent_face.tolist() == [0, 1, 3, 4, 0, 2, 2]
    for k, p in store.params.items():
        assert p.shape[0] == len(store)
        exp = store.optimizers[k].state[p]["exp_avg"]
        assert exp.shape == p.shape
        assert float(exp[-3:].abs().sum()) == 0.0  # new Gaussians start with zero moments
    parent_log_scale = -0.01  # after one Adam step of lr 0.01 on a positive gradient
    assert torch.allclose(store.params["log_scale"][-2:], torch.full((2, 3), parent_log_scale - math.log(1.6)))
    # another optimiser step still works on the new tensors
    sum(p.sum() for p in store.params.values()).backward()
    store.step()


def test_settings_presets_and_overrides():
    for name in FIT_PRESETS:
        s = preset_settings(name)
        assert s.iterations > 0 and s.preset == name
    s = FitSettings.from_json({"preset": "tiny", "iterations": 7, "densify": {"max_gaussians": 10}})
    assert s.iterations == 7 and s.densify.max_gaussians == 10 and s.unet_resolution == 32
    with pytest.raises(MVP4DError, match="fit.warp"):
        FitSettings.from_json({"warp": 1})
    with pytest.raises(MVP4DError, match="fit.densify.bogus"):
        FitSettings.from_json({"densify": {"bogus": 1}})
    with pytest.raises(MVP4DError, match="fit.preset"):
        FitSettings.from_json({"preset": "huge"})
    with pytest.raises(MVP4DError, match="fit.lr_sh must be a finite number"):
        FitSettings.from_json({"lr_sh": "fast"})
    with pytest.raises(MVP4DError, match="fit.iterations must be an integer"):
        FitSettings.from_json({"iterations": 2.5})
    assert FitSettings.from_json({"lr_sh": 1}).lr_sh == 1.0


def test_tangent_frame_offsets_map_normal_to_local_normal():
    from backend.avatar.binding import face_frames
    from backend.avatar.unet import tangent_to_local
    from backend.flame import build_toy_head

    m = build_toy_head()
    R, _, c = face_frames(torch.as_tensor(m.v_template, dtype=torch.float32), torch.as_tensor(m.faces))
    M = tangent_to_local(R, c, torch.zeros(3))
    eye = torch.eye(3).expand_as(M)
    assert torch.allclose(M @ M.transpose(-1, -2), eye, atol=1e-5)  # a rotation
    assert torch.allclose(M[..., 1], torch.tensor([0.0, 1.0, 0.0]).expand(len(M), 3), atol=1e-5)  # normal -> local y


def test_deform_unet_runs_wholly_on_the_frames_device():
    """Every tensor the U-Net makes in forward follows its input's device (the CUDA fit once failed here).

    The meta device stands in for CUDA: mixing a CPU tensor into a meta computation raises, as on a GPU.
    """
    net = DeformUNet(resolution=16, channels=4, depth=2, num_frames=9).to("meta")
    out = net(torch.tensor([0, 4, 8], device="meta"))
    assert out.device.type == "meta" and out.shape == (3, 3, 16, 16)
