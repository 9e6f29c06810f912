"""Issue 14, classes 6 and 7: non-human and unusable faces, huge photos, stopping tracking quickly.

Thresholds and the measurements behind them: docs/reliability.md, sections 6 and 7.
"""

from __future__ import annotations

import struct
import threading
import time
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from backend.cameras import Camera, intrinsics
from backend.errors import Cancelled, MVP4DError
from backend.events import CancelToken
from backend.flame.lbs import FlameParams
from backend.tracking import TrackResult, fit_flame, get_flame, track_from_params, track_image
from backend.tracking.image import MAX_IMAGE_PIXELS, WORK_MAX_SIDE, as_rgb_uint8, load_image, load_image_and_size
from backend.tracking.landmarks import detect_landmarks
from backend.tracking.plausibility import FACE_SCORE_WARN, check_face, check_fit


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut())


def _no_face(image: np.ndarray) -> MVP4DError:
    """track_image must refuse before the FLAME fit (which would take seconds)."""
    with pytest.raises(MVP4DError) as ei:
        track_image(image, fit_options={"steps": 1, "rigid_steps": 1})
    assert ei.value.code == "NO_FACE", ei.value
    assert "\n" not in ei.value.message and ei.value.hint
    return ei.value


# ---------------------------------------------------------------------------------------------
# 6. not every face is a person's
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["upright", "rotated 90", "mirrored"])
def test_human_faces_pass_without_warning(astronaut, variant: str) -> None:
    img = {
        "upright": astronaut,
        "rotated 90": np.ascontiguousarray(np.rot90(astronaut)),
        "mirrored": np.ascontiguousarray(astronaut[:, ::-1]),
    }[variant]
    warnings: list[str] = []
    info = check_face(img, detect_landmarks(img), warn=warnings.append)
    assert warnings == []
    assert info["face_score"] >= FACE_SCORE_WARN


@pytest.mark.parametrize("name", ["chelsea (cat)", "cat, twice the size", "colour wheel", "motorcycle"])
def test_animals_and_objects_are_refused(name: str) -> None:
    img = {
        "chelsea (cat)": data.chelsea(),
        "cat, twice the size": cv2.resize(data.chelsea(), None, fx=2, fy=2),
        "colour wheel": data.colorwheel(),
        "motorcycle": data.stereo_motorcycle()[0],
    }[name]
    err = _no_face(np.ascontiguousarray(img))
    assert "person's face" in err.message and "animals" in err.message


@pytest.mark.parametrize("name", ["coffee", "rocket", "noise"])
def test_images_without_any_face_are_refused(name: str) -> None:
    img = np.random.default_rng(0).integers(0, 256, (256, 256, 3), np.uint8) if name == "noise" else getattr(data, name)()
    assert "no face found" in _no_face(np.ascontiguousarray(img)).message


@pytest.mark.parametrize("side", [96, 128])
def test_tiny_face_is_refused_with_a_hint(astronaut, side: int) -> None:
    err = _no_face(cv2.resize(astronaut, (side, side), interpolation=cv2.INTER_AREA))
    assert "pixels across" in err.message
    assert "crop" in err.hint


def test_small_face_warns(astronaut) -> None:
    canvas = np.full((1024, 1024, 3), 200, np.uint8)
    canvas[100:356, 300:556] = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    warnings: list[str] = []
    check_face(canvas, detect_landmarks(canvas), warn=warnings.append)
    assert len(warnings) == 1 and "small" in warnings[0]


def test_face_cut_off_by_the_border_is_refused(astronaut) -> None:
    face = detect_landmarks(astronaut)
    v1 = face.box[3]
    cut = np.ascontiguousarray(astronaut[: int(v1 - 0.5 * (v1 - face.box[1]))])  # lower half of the face gone
    assert "cut off" in _no_face(cut).message


def _result(shape0: float = 0.0, yaw_deg: float = 0.0, rel_err: float = 0.01) -> TrackResult:
    flame = get_flame("toy")
    params = FlameParams.zeros(flame.model, 1)
    params.shape[..., 0] = shape0
    a = np.radians(yaw_deg)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    w2c = np.eye(4)
    w2c[:3, :3] = np.diag([1.0, -1.0, -1.0]) @ ry
    w2c[2, 3] = 1.0
    cam = Camera(K=intrinsics(1000.0, 512, 512), world_to_cam=w2c, width=512, height=512, name="reference")
    return TrackResult(params=params, camera=cam, mean_error_px=rel_err * 100, face_box_size_px=100.0,
                       relative_error=rel_err)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({}, None), ({"shape0": 3.2}, "proportions"), ({"yaw_deg": 70.0}, "turned 70"), ({"rel_err": 0.06}, "roughly")],
)
def test_implausible_fits_warn(kwargs: dict, words: str | None) -> None:
    warnings: list[str] = []
    m = check_fit(_result(**kwargs), warn=warnings.append)
    if words is None:
        assert warnings == [] and m["head_turn_deg"] < 1.0
    else:
        assert len(warnings) == 1 and words in warnings[0], warnings


# ---------------------------------------------------------------------------------------------
# 7. huge inputs, stopping quickly
# ---------------------------------------------------------------------------------------------


def _png_claiming(path, width: int, height: int) -> None:
    """A tiny valid PNG whose header claims ``width`` x ``height`` (IHDR rewritten, CRC fixed)."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    raw = bytearray(path.read_bytes())
    ihdr = raw[12:29]  # type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("size", [(10_000, 10_000), (12_000, 9_000), (60_000, 60_000)])
def test_huge_image_is_refused_before_decoding(tmp_path, size: tuple[int, int]) -> None:
    path = tmp_path / "huge.png"
    _png_claiming(path, *size)
    tracemalloc.start()
    try:
        with pytest.raises(MVP4DError) as ei:
            load_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ei.value.code == "BAD_INPUT" and "too large" in ei.value.message and "megapixels" in ei.value.message
    assert "Downscale" in ei.value.hint
    assert peak < 4 * 2**20


def test_huge_array_is_refused_without_copying() -> None:
    view = np.broadcast_to(np.zeros(3, np.uint8), (10_000, 9_000, 3))  # 270 MB it does not hold
    assert view.shape[0] * view.shape[1] > MAX_IMAGE_PIXELS
    with pytest.raises(MVP4DError) as ei:
        as_rgb_uint8(view)
    assert ei.value.code == "BAD_INPUT" and "too large" in ei.value.message


def test_large_jpeg_is_decoded_reduced(tmp_path, astronaut) -> None:
    big = cv2.resize(astronaut, (4096, 3072), interpolation=cv2.INTER_LINEAR)  # 12.6 MP
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path, quality=85)
    del big
    tracemalloc.start()
    try:
        img = load_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert img.shape == (1536, 2048, 3)
    # a full-size decode converts 37.7 MB to numpy at least once; the reduced one ~2 x 9.4 MB
    assert peak < 4096 * 3072 * 3, f"decoded at full size? peak {peak / 2**20:.1f} MiB"
    full, size = load_image_and_size(path, max_side=None)
    assert full.shape == (3072, 4096, 3) and size == (4096, 3072)
    assert load_image_and_size(path)[1] == (4096, 3072)  # the file's size, whatever the working size


def test_large_png_is_downscaled(tmp_path, astronaut) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(cv2.resize(astronaut, (2600, 1300))).save(path, compress_level=1)
    img = load_image(path)
    assert img.shape == (WORK_MAX_SIDE // 2, WORK_MAX_SIDE, 3)


def test_user_camera_follows_the_downscaled_photo(tmp_path, astronaut) -> None:
    flame = get_flame("toy")
    params_path = tmp_path / "params.npz"
    FlameParams.zeros(flame.model, 1).save_npz(params_path, frame=0)
    w, h = 3000, 1500
    photo = tmp_path / "photo.png"
    Image.fromarray(cv2.resize(astronaut, (w, h))).save(photo, compress_level=1)
    w2c = np.eye(4)
    w2c[:3, :3] = np.diag([1.0, -1.0, -1.0])
    w2c[2, 3] = 1.0
    cam = Camera(K=intrinsics(3000.0, w, h), world_to_cam=w2c, width=w, height=h, name="reference")
    res = track_from_params(params_path, cam, image=photo, flame_source=flame)
    assert (res.camera.width, res.camera.height) == (WORK_MAX_SIDE, WORK_MAX_SIDE // 2)
    assert res.matted.shape == (WORK_MAX_SIDE // 2, WORK_MAX_SIDE, 3)
    assert res.camera.K[0, 0] == pytest.approx(3000.0 * WORK_MAX_SIDE / w)
    wrong = Camera(K=intrinsics(3000.0, 640, 480), world_to_cam=w2c, width=640, height=480, name="reference")
    with pytest.raises(MVP4DError, match="3000x1500 but the camera is 640x480"):
        track_from_params(params_path, wrong, image=photo, flame_source=flame)


def test_fit_has_cancel_points_and_stops_quickly(astronaut) -> None:
    flame = get_flame("toy")
    face = detect_landmarks(astronaut)
    calls = 0

    def count() -> None:
        nonlocal calls
        calls += 1

    fit_flame(flame, face, 512, 512, yaw_guesses=(0.0,), rigid_steps=10, steps=20, check=count)
    assert calls >= 30  # one per optimiser evaluation: every few milliseconds

    token = CancelToken()
    timer = threading.Timer(0.3, token.request)
    timer.start()
    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        fit_flame(flame, face, 512, 512, rigid_steps=400, steps=4000, check=token.check)
    timer.join()
    assert time.perf_counter() - t0 < 2.3, "tracking must stop within ~2 s of a stop request"


def test_track_image_checks_for_cancel_before_the_fit(astronaut) -> None:
    token = CancelToken()
    token.request("test")
    with pytest.raises(Cancelled):
        track_image(astronaut, check=token.check)


def test_optimizer_import_is_cancellable() -> None:
    """The fit's one uninterruptible step (torch._dynamo's first import) is waited for with cancel checks."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, time, torch\n"
        "from backend.errors import Cancelled\n"
        "from backend.tracking.fit import import_optimizer\n"
        "t = time.perf_counter()\n"
        "def check():\n"
        "    if time.perf_counter() - t > 0.2: raise Cancelled()\n"
        "try:\n"
        "    import_optimizer(check); print('imported', time.perf_counter() - t)\n"
        "except Cancelled:\n"
        "    print('cancelled', time.perf_counter() - t)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=True).stdout.split()
    what, elapsed = out[-2], float(out[-1])
    assert what in ("imported", "cancelled")
    if what == "cancelled":  # the import was still running at 0.2 s: the stop took effect at once
        assert elapsed < 0.8, elapsed


def test_file_size_follows_exif_orientation(tmp_path, astronaut) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated by 90 degrees
    path = tmp_path / "rotated.jpg"
    Image.fromarray(np.ascontiguousarray(astronaut[:200, :300])).save(path, exif=exif.tobytes())
    img, size = load_image_and_size(path)
    assert img.shape == (300, 200, 3) and size == (200, 300)
