"""``python -m backend render``: the backend's own RGBA render of a bundle, one view or a turntable."""

from __future__ import annotations

import dataclasses
import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest
from PIL import Image

from backend.avatar.bundle import write_bundle
from backend.cameras import orbit_camera
from backend.cli import main

from .avatar_helpers import toy_bundle


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("render")
    b = toy_bundle(num_frames=3, num_gaussians=600, sh_degree=1, detail=True)
    bundle = write_bundle(d / "avatar.safetensors", b)
    cams = [orbit_camera(az, 0.0, center=(0.0, 0.0, 0.0), distance=0.8, focal_px=220.0, resolution=64,
                         name=n, key=n == "key00").to_spec() for n, az in (("key00", 0.0), ("view00", 40.0))]
    (d / "cameras.json").write_text(json.dumps([dataclasses.asdict(c) for c in cams]))
    return d, bundle


def _run(*argv) -> tuple[int, list[dict]]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["render", *map(str, argv)])
    return rc, [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_render_view_frame_and_resolution(files):
    d, bundle = files
    rc, ev = _run(bundle, "--cameras", d / "cameras.json", "--view", "key00", "--frame", 2, "--resolution", 48,
                  "--out", d / "f2.png")
    assert rc == 0 and ev[-1]["type"] == "done"
    img = np.asarray(Image.open(d / "f2.png"))
    assert img.shape == (48, 48, 4)
    alpha = img[..., 3]
    assert alpha[16:32, 16:32].mean() > 100 and alpha[0, 0] == 0  # the head in the middle, transparent corners
    _run(bundle, "--cameras", d / "cameras.json", "--view", "key00", "--frame", 0, "--resolution", 48,
         "--out", d / "f0.png")
    f0 = np.asarray(Image.open(d / "f0.png")).astype(float)
    assert np.abs(f0 - img).mean() > 1.0  # another frame is another image (the jaw opens, the head turns)


def test_turntable_writes_orbiting_views(files):
    d, bundle = files
    rc, _ = _run(bundle, "--cameras", d / "cameras.json", "--view", "key00", "--turntable", 4, "--resolution", 32,
                 "--out", d / "tt")
    assert rc == 0
    imgs = [np.asarray(Image.open(d / "tt" / f"{i:04d}.png")) for i in range(4)]
    assert all(i.shape == (32, 32, 4) and i[..., 3].max() > 200 for i in imgs)
    assert np.abs(imgs[0].astype(float) - imgs[2]).mean() > 2.0  # front and back differ


@pytest.mark.parametrize("argv,message", [(["--view", "nope"], "no view named"),
                                          (["--view", "key00", "--frame", "9"], "outside the bundle")])
def test_bad_arguments_are_typed_errors(files, argv, message):
    d, bundle = files
    rc, ev = _run(bundle, "--cameras", d / "cameras.json", *argv, "--out", d / "x.png")
    assert rc != 0 and ev[-1]["code"] == "BAD_INPUT" and message in ev[-1]["message"]
    assert not (d / "x.png").exists()
