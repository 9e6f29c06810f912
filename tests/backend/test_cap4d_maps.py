"""CAP4D conditioning maps: mouth placement, channel layout, rays, FLAME_REQUIRED, frame budget, paste-back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.cameras import Camera
from backend.cameras.camera import intrinsics, look_at
from backend.cap4d.maps import CAP4DGeometry, conditioning_maps, posed_head, ray_directions
from backend.cap4d.mouth import LIP_VERTEX, mouth_sphere
from backend.errors import MVP4DError
from backend.flame import Flame, FlameParams
from backend.flame.toy import build_toy_head
from backend.generators.cap4d import cap4d_frames, paste_crop

from .cap4d_flame import cap4d_geometry, flame_layout_head


@pytest.fixture(scope="module")
def head():
    model = flame_layout_head()
    return Flame(model), CAP4DGeometry.from_tensors(cap4d_geometry(model))


def _camera(size=64, az=0.0):
    eye = np.array([np.sin(np.radians(az)), 0.0, np.cos(np.radians(az))]) * 0.6
    return Camera(K=intrinsics(size * 2.2, size, size), world_to_cam=look_at(eye, np.zeros(3)), width=size,
                  height=size, name="c")


def test_mouth_cap_is_a_half_sphere_behind_the_lips_moving_with_the_head(head):
    flame, _ = head
    s = mouth_sphere()
    assert s.shape == (200, 3) and torch.allclose(s.norm(dim=-1), torch.ones(200, dtype=torch.float64))
    assert (s[:, 2] >= -1e-9).all()  # the flips turn the lower half sphere into a cap along +z
    p = FlameParams.zeros(flame.model, 2)
    p.global_rot[1] = torch.tensor([0.0, 0.6, 0.0])
    p.transl[1] = torch.tensor([0.01, 0.02, 0.03])
    v, off = posed_head(flame, p)
    assert v.shape == (2, 5223, 3) and (off[:, 5023:] == 0).all()
    m0, m1 = v[0, 5023:], v[1, 5023:]
    d = lambda m: (m[:, None] - m[None]).norm(dim=-1)  # noqa: E731
    assert torch.allclose(d(m0), d(m1), atol=1e-5)  # rigid
    lip, jaw = v[0, LIP_VERTEX], (flame.J_regressor[2] @ v[0, :5023])
    centre = m0.mean(0)
    assert torch.dot(centre - jaw, lip - jaw) > 0.5 * (lip - jaw).norm() ** 2  # most of the way to the lips


def test_maps_channels_and_rays(head):
    flame, geom = head
    cam = _camera()
    v, off = posed_head(flame, FlameParams.zeros(flame.model, 1))
    maps = conditioning_maps(geom, v, off, [cam], cam, 8)
    assert maps.shape == (1, 8, 8, 50)
    covered = maps[0, ..., :42].abs().sum(-1) > 0
    assert covered.any() and not covered.all()  # the head in the middle, background 0
    assert (maps[..., 48] == 0).all() and (maps[..., 49] == 1).all()
    rays = maps[0, ..., 45:48]
    assert torch.allclose(rays.norm(dim=-1), torch.ones(8, 8), atol=1e-5)
    # integer latent pixels with intrinsics × h/H: the principal point's pixel looks straight ahead
    r = ray_directions(cam, cam, 8, 8)
    K = cam.K * 8 / 64
    i, j = int(round(K[1, 2])), int(round(K[0, 2]))
    assert r[i, j, 2] > 0.999
    # another view's rays are expressed in the reference camera's axes
    side = _camera(az=90.0)
    r2 = ray_directions(side, cam, 8, 8)
    assert abs(float(r2[i, j, 0])) > 0.99  # looking along the reference camera's x axis


def test_toy_head_is_refused():
    toy = Flame(build_toy_head())
    with pytest.raises(MVP4DError) as e:
        posed_head(toy, FlameParams.zeros(toy.model, 1))
    assert e.value.code == "FLAME_REQUIRED" and "flame.is.tue.mpg.de" in e.value.hint


def test_frame_budget_and_paste_back():
    assert cap4d_frames(89, 48, "high") == [int(round(x)) for x in np.linspace(0, 88, 17)]
    assert cap4d_frames(5, 6, "tiny") == [0, 4] and cap4d_frames(89, 300, "low") == [0]
    assert len(cap4d_frames(17, 12, "medium")) == 17
    crop = torch.zeros(3, 8, 8)
    img = paste_crop(crop, np.array([4.0, 4.0, 8.0]), 16, 16)
    assert img.shape == (16, 16, 3)
    assert (img[4:12, 4:12] == 0).all() and (img[:3] == 255).all() and (img[:, 13:] == 255).all()
