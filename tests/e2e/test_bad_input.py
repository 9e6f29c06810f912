"""Bad input gets an ``error`` event with a stable code, a non-zero exit, and nothing passed off as done."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from .conftest import run_backend


def _last_error(events):
    assert events, "no events printed"
    ev = events[-1]
    assert ev.type == "error", ev
    assert ev.message and ev.hint and "\n" not in ev.message
    return ev


def _no_corpus(out):
    assert not (out / "stages" / "corpus" / "done.json").exists()
    assert not (out / "outputs" / "corpus_preview.png").exists()


@pytest.mark.parametrize("kind", ["missing", "corrupt", "text"])
def test_unreadable_image(tmp_path, kind):
    img = tmp_path / "face.png"
    if kind == "corrupt":
        img.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    elif kind == "text":
        img = tmp_path / "face.jpg"
        img.write_text("this is not a picture")
    code, events, _ = run_backend("corpus", "--image", str(img), "--out", str(tmp_path / "job"), "--preset", "tiny")
    assert code != 0
    ev = _last_error(events)
    assert ev.code == "BAD_INPUT"
    _no_corpus(tmp_path / "job")


def test_image_without_face(tmp_path):
    img = tmp_path / "wall.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((256, 256, 3)) * 60 + 100).astype(np.uint8)).save(img)
    code, events, _ = run_backend("corpus", "--image", str(img), "--out", str(tmp_path / "job"), "--preset", "tiny")
    assert code != 0
    ev = _last_error(events)
    assert (ev.code, ev.stage) == ("NO_FACE", "track")
    assert not (tmp_path / "job" / "stages" / "track" / "done.json").exists()
    _no_corpus(tmp_path / "job")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_flame_pickle_with_foreign_class(tmp_path, astronaut_png):
    bad = tmp_path / "generic_model.pkl"
    bad.write_bytes(pickle.dumps({"v_template": np.zeros((3, 3)), "f": _Evil()}, protocol=2))
    code, events, _ = run_backend("corpus", "--image", str(astronaut_png), "--out", str(tmp_path / "job"),
                                  "--preset", "tiny", "--flame", str(bad))
    assert code != 0
    assert _last_error(events).code == "FLAME_INVALID"
    _no_corpus(tmp_path / "job")


def test_flame_file_with_wrong_shapes(tmp_path, astronaut_png):
    bad = tmp_path / "flame.npz"
    kintree = np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]])
    np.savez(bad, v_template=np.zeros((10, 3)), f=np.zeros((4, 3), np.int64), shapedirs=np.zeros((10, 3, 400)),
             posedirs=np.zeros((10, 3, 36)), J_regressor=np.zeros((5, 10)), kintree_table=kintree,
             weights=np.zeros((11, 5)))  # one row too many
    code, events, _ = run_backend("corpus", "--image", str(astronaut_png), "--out", str(tmp_path / "job"),
                                  "--preset", "tiny", "--flame", str(bad))
    assert code != 0
    ev = _last_error(events)
    assert ev.code == "FLAME_INVALID"
    assert "weights" in ev.message and "(11, 5)" in ev.message


def _job_with(tmp_path, astronaut_png, mutate):
    """Create a valid job (not run), then edit its job.json as a third-party writer might."""
    from backend.jobs import create_job

    job = tmp_path / "job"
    create_job(job, astronaut_png)
    d = json.loads((job / "job.json").read_text())
    mutate(d)
    (job / "job.json").write_text(json.dumps(d))
    return job


def test_empty_camera_ring(tmp_path, astronaut_png):
    job = _job_with(tmp_path, astronaut_png, lambda d: d["cameras"].update(cameras=[]))
    code, events, _ = run_backend("run", str(job))
    assert code != 0
    ev = _last_error(events)
    assert ev.code == "BAD_INPUT" and "cameras.cameras" in ev.message and "empty" in ev.message
    assert not (job / "stages" / "track").exists()


@pytest.mark.parametrize("path", ["../escape.png", "/etc/hostname", "inputs/../../escape.png"])
def test_spec_path_leaving_job_folder(tmp_path, astronaut_png, path):
    job = _job_with(tmp_path, astronaut_png, lambda d: d["inputs"].update(reference_image=path))
    code, events, _ = run_backend("run", str(job))
    assert code != 0
    ev = _last_error(events)
    assert ev.code == "BAD_INPUT" and "inputs.reference_image" in ev.message


def test_symlink_leaving_job_folder(tmp_path, astronaut_png):
    job = _job_with(tmp_path, astronaut_png, lambda d: d["inputs"].update(reference_image="inputs/link.png"))
    (job / "inputs" / "link.png").symlink_to(astronaut_png)
    code, events, _ = run_backend("run", str(job))
    assert code != 0
    assert "may not leave the job folder" in _last_error(events).message


def test_two_faces_warns_and_uses_largest(tmp_path):
    from skimage import data

    from tests.backend.test_tracking_inputs import two_faces_image

    img = tmp_path / "two.png"
    Image.fromarray(two_faces_image(np.asarray(data.astronaut()))).save(img)
    code, events, err = run_backend("track", "--image", str(img), "--out", str(tmp_path / "track"))
    assert code == 0, err[-1000:]
    warnings = [e for e in events if e.type == "warning"]
    assert any("2 faces" in (w.message or "") for w in warnings)
    lm = json.loads((tmp_path / "track" / "landmarks.json").read_text())
    assert np.asarray(lm["detected_px"])[:, 0].mean() < 256  # the larger (left) face was tracked
