"""Tracking inputs: image loading errors and formats, atomic PNG writes, landmarks, matting."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from PIL import Image

from backend.errors import MVP4DError
from backend.tracking.image import default_reference_image, load_image, save_png_atomic
from backend.tracking.landmarks import NUM_LANDMARKS, detect_faces, detect_landmarks
from backend.tracking.matting import matte_to_white


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return default_reference_image()


def _bad_input(path) -> MVP4DError:
    with pytest.raises(MVP4DError) as ei:
        load_image(path)
    assert ei.value.code == "BAD_INPUT"
    assert str(path) in ei.value.message
    return ei.value


# ---------------------------------------------------------------------------------------------
# load_image
# ---------------------------------------------------------------------------------------------


def test_load_image_errors_name_path_and_problem(tmp_path, astronaut):
    assert "does not exist" in _bad_input(tmp_path / "missing.png").message
    assert "folder" in _bad_input(tmp_path).message
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert "empty" in _bad_input(empty).message
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n" * 20)
    assert "not an image" in _bad_input(text).message
    garbage = tmp_path / "noise.jpg"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _bad_input(garbage)
    good = tmp_path / "good.png"
    Image.fromarray(astronaut).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "truncated" in _bad_input(truncated).message
    jpg = tmp_path / "good.jpg"
    Image.fromarray(astronaut).save(jpg, quality=90)
    truncated_jpg = tmp_path / "truncated.jpg"
    truncated_jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 3])
    _bad_input(truncated_jpg)
    small = tmp_path / "small.png"
    Image.fromarray(astronaut[:40, :300]).save(small)
    assert "at least 64" in _bad_input(small).message


def test_load_image_formats(tmp_path, astronaut):
    # RGB round trip
    Image.fromarray(astronaut).save(tmp_path / "rgb.png")
    out = load_image(tmp_path / "rgb.png")
    assert out.dtype == np.uint8 and out.shape == (512, 512, 3)
    np.testing.assert_array_equal(out, astronaut)
    # RGBA: transparent pixels become white, opaque ones keep their colour
    rgba = np.dstack([astronaut, np.full((512, 512), 255, np.uint8)])
    rgba[:100, :100, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    assert out.shape == (512, 512, 3)
    assert (out[:100, :100] == 255).all()
    np.testing.assert_array_equal(out[200:, 200:], astronaut[200:, 200:])
    # greyscale 8 and 16 bit
    grey = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    out = load_image(tmp_path / "grey.png")
    assert out.shape == (512, 512, 3) and (out[..., 0] == grey).all() and (out[..., 2] == grey).all()
    grey16 = grey.astype(np.uint16) * 257
    assert cv2.imwrite(str(tmp_path / "grey16.png"), grey16)
    out = load_image(tmp_path / "grey16.png")
    assert out.dtype == np.uint8 and np.abs(out[..., 0].astype(int) - grey).max() <= 1
    # 16-bit RGB (cv2 writes BGR)
    rgb16 = astronaut.astype(np.uint16) * 257
    assert cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])
    out = load_image(tmp_path / "rgb16.png")
    assert out.shape == (512, 512, 3) and np.abs(out.astype(int) - astronaut).max() <= 1


def test_load_image_applies_exif_orientation(tmp_path, astronaut):
    img = astronaut[:, :300]  # 512 rows x 300 cols: rotation is visible in the shape
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    Image.fromarray(img).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.shape == (300, 512, 3)
    expected = np.rot90(img, k=-1)  # clockwise
    assert np.abs(out.astype(int) - expected).mean() < 4


# ---------------------------------------------------------------------------------------------
# save_png_atomic
# ---------------------------------------------------------------------------------------------


def test_save_png_atomic_round_trip_and_no_partial_file(tmp_path, astronaut, monkeypatch):
    path = tmp_path / "sub" / "out.png"
    save_png_atomic(path, astronaut)
    np.testing.assert_array_equal(load_image(path), astronaut)
    before = path.read_bytes()

    def broken_save(self, fp, format=None, **params):  # writes some bytes, then fails mid-encode
        with open(fp, "wb") as f:
            f.write(b"\x89PNG partial")
        raise OSError("encoder exploded")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="encoder exploded"):
        save_png_atomic(path, np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(OSError):
        save_png_atomic(tmp_path / "new.png", np.zeros((64, 64, 3), np.uint8))
    assert path.read_bytes() == before  # the old complete file is untouched
    assert not (tmp_path / "new.png").exists()  # nothing under the final name
    assert [p.name for p in tmp_path.iterdir()] == ["sub"]  # and no temp files left behind
    assert os.listdir(tmp_path / "sub") == ["out.png"]


def test_save_png_atomic_greyscale(tmp_path):
    a = (np.arange(64 * 80) % 256).astype(np.uint8).reshape(64, 80)
    save_png_atomic(tmp_path / "a.png", a)
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), a)


# ---------------------------------------------------------------------------------------------
# landmarks
# ---------------------------------------------------------------------------------------------


def test_detect_landmarks_on_astronaut(astronaut):
    face = detect_landmarks(astronaut)
    assert face.points.shape == (NUM_LANDMARKS, 2) and face.z.shape == (NUM_LANDMARKS,)
    assert face.image_size == (512, 512)
    u0, v0, u1, v1 = face.box
    # the astronaut's face sits in the upper middle of the photo, ~100 px across
    assert 150 < u0 < u1 < 300 and 50 < v0 < v1 < 200
    assert 80 < face.box_size < 140
    assert face.area == pytest.approx((u1 - u0) * (v1 - v0))
    # pixel-centre convention: flipping the image mirrors u about (W - 1) / 2
    flipped = detect_landmarks(np.ascontiguousarray(astronaut[:, ::-1]))
    assert abs((flipped.center[0] + face.center[0]) - 511.0) < 3.0


def test_small_face_in_a_large_photo_is_found(astronaut):
    # ~7 % of the image side: too small for MediaPipe's whole-image pass, found by the tile search
    canvas = np.full((1536, 1536, 3), 255, np.uint8)
    canvas[700:1212, 300:812] = astronaut
    assert detect_faces(canvas, search=False) == []
    faces = detect_faces(canvas)
    assert len(faces) == 1
    direct = detect_landmarks(astronaut)
    assert faces[0].image_size == (1536, 1536)
    assert np.abs(faces[0].points - (direct.points + [300, 700])).mean() < 2.0


@pytest.mark.parametrize("kind", ["grey", "noise"])
def test_no_face(kind):
    rng = np.random.default_rng(1)
    img = np.full((256, 256, 3), 128, np.uint8) if kind == "grey" else rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert detect_faces(img) == []
    with pytest.raises(MVP4DError) as ei:
        detect_landmarks(img)
    assert ei.value.code == "NO_FACE"


def two_faces_image(astronaut: np.ndarray) -> np.ndarray:
    """The astronaut's head twice on a white 512x256 canvas: full size left, 0.75x right."""
    crop = astronaut[20:240, 110:340]
    canvas = np.full((256, 512, 3), 255, np.uint8)
    big = crop
    small = cv2.resize(crop, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)
    y = (256 - big.shape[0]) // 2
    canvas[y : y + big.shape[0], 10 : 10 + big.shape[1]] = big
    y = (256 - small.shape[0]) // 2
    canvas[y : y + small.shape[0], 502 - small.shape[1] : 502] = small
    return canvas


def test_two_faces_uses_largest_and_warns(astronaut):
    img = two_faces_image(astronaut)
    faces = detect_faces(img)
    assert len(faces) == 2, "MediaPipe should find both pasted faces"
    assert faces[0].area > faces[1].area * 1.4
    warnings: list[str] = []
    face = detect_landmarks(img, warn=warnings.append)
    assert warnings == ["found 2 faces; using the largest"]
    assert face.center[0] < 256  # the big one was pasted on the left
    assert face.area == faces[0].area


# ---------------------------------------------------------------------------------------------
# matting
# ---------------------------------------------------------------------------------------------


def test_matte_to_white(astronaut):
    matted, alpha = matte_to_white(astronaut)
    assert matted.dtype == np.uint8 and matted.shape == astronaut.shape
    assert alpha.dtype == np.float32 and alpha.shape == (512, 512)
    assert 0.0 <= alpha.min() and alpha.max() <= 1.0
    # the background (flag and wall at the top corners) becomes white
    for corner in (matted[:8, :8], matted[:8, -8:]):
        assert corner.min() >= 250
    # the face (inside the hull of its landmarks) is kept as it was
    face = detect_landmarks(astronaut)
    inside = np.zeros((512, 512), np.uint8)
    cv2.fillConvexPoly(inside, cv2.convexHull(np.round(face.points).astype(np.int32)), 1)
    inside = inside.astype(bool)
    assert alpha[inside].mean() > 0.98
    diff = np.abs(matted[inside].astype(int) - astronaut[inside].astype(int))
    assert diff.mean() < 2.0
    # and MediaPipe still finds it on the matted image
    assert len(detect_faces(matted)) == 1
