"""The 360 preset covers the paper's elevation range -30..+90 (S2.3) and the fit can use its top views."""

from __future__ import annotations

import numpy as np
import torch

from backend.avatar.data import check_cameras_see_head, facing_faces, face_normals
from backend.cameras import ring_preset
from backend.cameras.rings import closest_reference_angle
from backend.flame import Flame, load_flame
from backend.mmvdm.plan import build_plan


def _dirs(ae: np.ndarray) -> np.ndarray:
    a, e = np.radians(ae[..., 0]), np.radians(ae[..., 1])
    return np.stack([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)], -1)


def test_360_spans_minus30_to_90_with_8_keys_and_40_others():
    ring = ring_preset("360")
    ae = np.array(ring.azimuth_elevation)
    assert len(ring.key_indices) == 8 and len(ring.other_indices) == 40
    assert ae[:, 1].min() == -30 and ae[:, 1].max() >= 85
    plan = build_plan(ring, 89)
    first = [p for p in plan if p.id.startswith("w0-")]
    assert len(first) == 11 and sorted(len(p.views) for p in first) == [4] * 10 + [8]  # key pass + 10 clusters


def test_360_keys_are_uniform_over_the_whole_range():
    """Every direction of the range -30..90 lies within ~46 degrees of a key (covering radius), the
    keys are mutually well spaced, and the crown is a key view (generated in the first pass)."""
    ring = ring_preset("360")
    ae = np.array(ring.azimuth_elevation)
    keys = _dirs(ae[ring.key_indices])
    az, el = np.meshgrid(np.arange(-180.0, 180.0, 2.0), np.arange(-30.0, 90.01, 1.0))
    grid = _dirs(np.stack([az.ravel(), el.ravel()], -1))
    cover = np.degrees(np.arccos(np.clip(grid @ keys.T, -1, 1))).min(1)
    assert cover.max() < 46.0
    # uniform: the covering radius is the same order in the lower, middle and upper part of the range
    for lo, hi in ((-30, 10), (10, 50), (50, 90.01)):
        band = (el.ravel() >= lo) & (el.ravel() < hi)
        assert cover[band].max() > 30.0
    assert ae[ring.key_indices, 1].max() == 90.0
    for i in ring.other_indices:
        assert closest_reference_angle(ring, i, ring.key_indices) < 46.0


def test_top_view_looks_straight_down_with_a_defined_image_up():
    ring = ring_preset("360", center=(0, 0.02, 0), distance=1.1)
    top = max(ring.cameras, key=lambda c: c.center[1])
    np.testing.assert_allclose(top.forward, [0, -1, 0], atol=1e-9)
    R = top.world_to_cam[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(R) > 0
    # the face (+z) is at the bottom of the image, the back of the head at the top
    (u_face, v_face), (u_back, v_back) = top.project(np.array([[0, 0.02, 0.1], [0, 0.02, -0.1]]))[0]
    assert v_face > top.height / 2 > v_back and abs(u_face - (top.width - 1) / 2) < 1e-6


def test_the_fit_sees_the_crown_head_on_from_the_top_views():
    """The fit samples every corpus view; with the top views the crown is seen head-on (before, the
    highest view was at 60 degrees, so the crown was only ever seen at >= 30 degrees obliquity), and
    back-face culling at init keeps the crown triangles."""
    flame = Flame(load_flame("toy"))
    verts = flame.neutral_vertices()[None].to(torch.float64)
    faces = torch.as_tensor(np.asarray(flame.model.faces), dtype=torch.long)
    center = verts[0].mean(0).numpy()
    ring = ring_preset("360", center=center, distance=1.0, resolution=128, focal_px=300)
    check_cameras_see_head(ring.cameras, [c.name for c in ring.cameras], verts.float())
    n, cen = face_normals(verts[0], faces)
    crown = n[:, 1] > 0.98  # triangles facing (nearly) straight up
    assert crown.any()
    assert bool(facing_faces(verts, faces, ring.cameras)[crown].all())

    def best_obliquity(cameras) -> float:
        to_cam = torch.as_tensor(np.stack([c.center for c in cameras]))[:, None, :] - cen[crown][None]
        cos = (torch.nn.functional.normalize(to_cam, dim=-1) * n[crown][None]).sum(-1)  # (C, crown)
        return float(torch.rad2deg(torch.arccos(cos.max(0).values.clamp(-1, 1))).max())

    assert best_obliquity(ring.cameras) < 15.0
    up_to_60 = [c for c, (_, e) in zip(ring.cameras, ring.azimuth_elevation) if e <= 60]
    assert best_obliquity(up_to_60) > 25.0
