"""The projection generator reproduces the photo where it saw it, and fills the rest smoothly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.cameras import orbit_camera
from backend.generators.projection import ProjectionGenerator, harmonic_fill
from backend.job_stages import CROP_SCALE, head_bounds, reference_crop
from backend.tracking import get_flame, track_image
from backend.tracking.image import default_reference_image


@pytest.fixture(scope="module")
def tracked():
    flame = get_flame("toy")
    res = track_image(default_reference_image(), flame_source=flame)
    return flame, res


def _psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    err = ((a.astype(np.float64) - b.astype(np.float64)) ** 2)[mask].mean()
    return float(10 * np.log10(255.0**2 / max(err, 1e-12)))


@pytest.mark.parametrize("size", [128, 256])
def test_reference_view_reproduces_matted_crop(tracked, size):
    flame, res = tracked
    crop, crop_cam, outcrop = reference_crop(flame, res.params, res.camera, res.matted, size)
    with torch.no_grad():
        verts = flame(res.params).vertices
    gen = ProjectionGenerator(flame.model.faces, verts[0], res.camera, res.matted)
    frame = gen.render(verts, crop_cam)[0]
    head = (frame < 250).any(-1)  # rendered head region (background is pure white)
    assert head.mean() > 0.2
    psnr = _psnr(frame, crop, head)
    print(f"reference-view PSNR on the head region at {size}px: {psnr:.1f} dB")
    assert psnr >= 20.0


def test_unseen_side_is_filled_not_black(tracked):
    flame, res = tracked
    with torch.no_grad():
        verts = flame(res.params).vertices
    gen = ProjectionGenerator(flame.model.faces, verts[0], res.camera, res.matted)
    center, extent = head_bounds(flame, res.params.shape)
    back = orbit_camera(180.0, 0.0, center=center, distance=1.0, focal_px=128 / (CROP_SCALE * extent), resolution=128)
    img = gen.render(verts, back)[0]
    covered = (img < 250).any(-1)
    assert covered.mean() > 0.2  # the back of the head is drawn
    assert (img[covered].max(-1) > 20).all()  # and never as black holes


def test_harmonic_fill_keeps_known_and_interpolates():
    # a strip of 4 vertices: 0 - 1 - 2 - 3 (two triangles per square would do; a path suffices)
    faces = np.array([[0, 1, 2], [1, 2, 3]])
    out = harmonic_fill(4, faces, np.array([0, 3]), np.array([[0.0], [1.0]]))
    assert out[0, 0] == pytest.approx(0.0) and out[3, 0] == pytest.approx(1.0)
    assert 0.0 < out[1, 0] < 1.0 and 0.0 < out[2, 0] < 1.0
    # a component that touches no known vertex gets the mean colour, not zero
    faces2 = np.array([[0, 1, 2], [3, 4, 5]])
    out2 = harmonic_fill(6, faces2, np.array([0]), np.array([[0.8, 0.4, 0.2]]))
    assert np.allclose(out2[3:], [0.8, 0.4, 0.2], atol=1e-3)
