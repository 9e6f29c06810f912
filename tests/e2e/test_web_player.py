"""The web player (web/: three.js + Spark) plays an exported avatar in real headless Chromium.

The demo-like avatar (the toy head, splats coloured per face, ``tests.backend_fixtures toy-bundle``)
is exported with ``python -m backend export --format glb`` (head proxy hidden), served with the player
and driven by Playwright (``web/test/serve_and_drive.mjs``, Debian's chromium, SwiftShader WebGL).
Checks: the most open-jaw frame changes the mouth's pixels and not the forehead's; frame 0 at the
ring's camera ``key00`` matches ``python -m backend render`` of the same avatar (PSNR on the head); no
console errors. ``make test`` installs chromium and web/node_modules (``make web``). To check a real avatar
instead of the stand-in: ``MVP4D_WEB_AVATAR=out/demo/outputs/avatar.safetensors
MVP4D_WEB_CAMERAS=out/demo/stages/corpus/cameras.json pytest tests/e2e/test_web_player.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.avatar.binding_np import local_to_world_np
from backend.avatar.bundle import read_bundle, write_bundle
from backend.cameras.rings import ring_preset

from .conftest import REPO, run_backend

WEB = REPO / "web"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
READY = (Path(CHROMIUM).is_file() and shutil.which("node") is not None
         and (WEB / "node_modules" / "playwright-core").is_dir() and (WEB / "node_modules" / "three").is_dir())
pytestmark = pytest.mark.skipif(not READY, reason="chromium and web/node_modules are installed by `make web`")
RES = 256


def _build(entry: str) -> None:
    subprocess.run([str(WEB / "node_modules" / ".bin" / "esbuild"), f"src/{entry}.js", "--bundle",
                    "--format=esm", f"--outfile=dist/{entry}.js", "--log-level=warning"], cwd=WEB, check=True, timeout=300)


def three_camera(spec) -> dict:
    """An OpenCV CameraSpec (world->camera, +y down, +z forward) as a three.js camera (centred principal point)."""
    m = np.asarray(spec.world_to_cam, np.float64)
    R, t = m[:3, :3], m[:3, 3]
    pos = -R.T @ t
    forward = R.T @ np.array([0.0, 0.0, 1.0])
    up = R.T @ np.array([0.0, -1.0, 0.0])
    fov = float(np.degrees(2 * np.arctan(spec.height / 2 / spec.fy)))
    return {"position": pos.tolist(), "target": (pos + forward).tolist(), "up": up.tolist(), "fovY": fov,
            "width": spec.width, "height": spec.height}


def _project(spec, pts: np.ndarray) -> np.ndarray:
    m = np.asarray(spec.world_to_cam, np.float64)
    c = pts @ m[:3, :3].T + m[:3, 3]
    return np.stack([spec.fx * c[:, 0] / c[:, 2] + spec.cx, spec.fy * c[:, 1] / c[:, 2] + spec.cy], 1)


def _region(spec, pts: np.ndarray) -> np.ndarray:
    mask = np.zeros((spec.height, spec.width), bool)
    uv = np.rint(_project(spec, pts)).astype(int)
    ok = (uv[:, 0] >= 0) & (uv[:, 0] < spec.width) & (uv[:, 1] >= 0) & (uv[:, 1] < spec.height)
    mask[uv[ok, 1], uv[ok, 0]] = True
    from scipy.ndimage import binary_closing, binary_dilation

    return binary_dilation(binary_closing(mask, iterations=3), iterations=2)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    bundle_path = tmp / "avatar.safetensors"
    given = os.environ.get("MVP4D_WEB_AVATAR")  # a real avatar, e.g. `make demo`'s out/demo/outputs/avatar.safetensors
    if given:
        shutil.copy(given, bundle_path)
        bundle = read_bundle(bundle_path)
    else:
        subprocess.run([sys.executable, "-m", "tests.backend_fixtures", "toy-bundle", str(bundle_path), "--frames",
                        "9"], cwd=REPO, check=True, capture_output=True, timeout=300)
        # a face texture, as a fitted avatar has: colour stripes fixed on the skin (the stand-in is one grey)
        bundle = read_bundle(bundle_path)
        rest = local_to_world_np(bundle.parent_face, bundle.local_position, bundle.local_rotation, bundle.log_scale,
                                 bundle.rest_vertices, bundle.faces)[0]
        rgb = 0.5 + 0.4 * np.sin(2 * np.pi * rest / np.array([0.031, 0.017, 0.023]))
        bundle.sh[:, 0, :] = (rgb - 0.5) / 0.28209479177387814
    # one fine detail for all frames: a .glb holds one (the baked frame's), so the backend's render of any
    # frame is then comparable with the player's
    bundle.detail_offsets[:] = bundle.detail_offsets[0]
    write_bundle(bundle_path, bundle)
    code, _, err = run_backend("export", str(bundle_path), "--format", "glb", "--out", str(tmp / "avatar.glb"))
    assert code == 0, err
    if os.environ.get("MVP4D_WEB_CAMERAS"):  # the avatar's own corpus cameras (a job's stages/corpus/cameras.json)
        from backend.avatar.render_cli import at_resolution, load_cameras

        specs = [at_resolution(c, RES).to_spec() for c in load_cameras(os.environ["MVP4D_WEB_CAMERAS"], bundle)]
    else:
        specs = [c.to_spec() for c in ring_preset("tiny", distance=1.0, resolution=RES).cameras]
    (tmp / "cameras.json").write_text(json.dumps([dataclasses.asdict(s) for s in specs]))
    _build("player")
    return tmp, bundle_path, next(s for s in specs if s.name == "key00")


def _drive(tmp: Path, page: str, glb: Path, frames: list[int], camera: dict | None, query: str = "") -> tuple[dict, Path]:
    out = tmp / (page.replace(".html", "") + query.replace("=", "_"))
    out.mkdir(exist_ok=True)
    cfg = {"page": page, "glb": str(glb), "out": str(out), "chromium": CHROMIUM, "camera": camera, "frames": frames,
           "query": query}
    (out / "config.json").write_text(json.dumps(cfg))
    subprocess.run(["node", str(WEB / "test" / "serve_and_drive.mjs"), str(out / "config.json")], cwd=WEB, check=True,
                   timeout=240)
    return json.loads((out / "report.json").read_text()), out


def _psnr_vs_backend(tmp: Path, bundle_path: Path, key, frame: int, got: np.ndarray) -> float:
    ref = tmp / f"ref_{frame:04d}.png"
    if not ref.is_file():
        code, _, err = run_backend("render", str(bundle_path), "--cameras", str(tmp / "cameras.json"), "--view",
                                   "key00", "--frame", str(frame), "--out", str(ref))
        assert code == 0, err
    rgba = np.asarray(Image.open(ref).convert("RGBA"), np.float64)
    alpha = rgba[..., 3:] / 255.0
    want = rgba[..., :3] * alpha  # over the player's black background
    head = alpha[..., 0] > 0.5
    mse = np.mean((got[head] - want[head]) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def _keep_shot(path: Path, name: str) -> None:
    """Screenshots for docs/engines.md: copied into $MVP4D_SHOTS_DIR when it is set."""
    if os.environ.get("MVP4D_SHOTS_DIR"):
        shutil.copy(path, Path(os.environ["MVP4D_SHOTS_DIR"]) / name)


def _img(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float64)


@pytest.mark.parametrize("skin", ["gpu", "cpu"])
def test_player_animates_the_mouth_and_matches_the_backend_render(exported, skin):
    """``gpu``: morph targets in JavaScript, skin in Spark's SplatSkinning; ``cpu``: both in JavaScript."""
    tmp, bundle_path, key = exported
    bundle = read_bundle(bundle_path)
    open_frame = int(np.argmax(np.abs(bundle.jaw_pose[:, 0])))
    assert open_frame > 0
    expr_frame = int(np.argmax(np.abs(bundle.expr).sum(1)))  # where the morph targets matter most
    assert expr_frame not in (0, open_frame)
    report, out = _drive(tmp, "index.html", tmp / "avatar.glb", [0, open_frame, expr_frame], three_camera(key),
                         f"skin={skin}")
    assert report["errors"] == [], report["errors"]
    assert report["info"]["numFrames"] == bundle.num_frames
    assert report["info"]["skin"] == skin  # the jaw opens by the skin alone (jaw_pose; no jaw expression here)
    assert report["info"]["morphs"] == skin
    a, b = _img(out / "frame_0000.png"), _img(out / f"frame_{open_frame:04d}.png")
    # regions from the avatar itself: splats on jaw-driven faces (mouth) and on the top of the face (forehead)
    local = bundle.local_position + bundle.detail_offsets[0]
    pos0 = local_to_world_np(bundle.parent_face, local, bundle.local_rotation, bundle.log_scale,
                             bundle.vertices[0], bundle.faces)[0]
    posk = local_to_world_np(bundle.parent_face, local, bundle.local_rotation, bundle.log_scale,
                             bundle.vertices[open_frame], bundle.faces)[0]
    moved = np.linalg.norm(posk - pos0, axis=1)
    front = pos0[:, 2] > np.percentile(pos0[:, 2], 60)
    mouth = _region(key, np.concatenate([pos0[front & (moved > np.percentile(moved, 90))],
                                         posk[front & (moved > np.percentile(moved, 90))]]))
    top = pos0[:, 1] > np.percentile(pos0[front, 1], 85)
    forehead = _region(key, pos0[front & top & (moved < 1e-4)])
    assert mouth.sum() > 100 and forehead.sum() > 100
    changed = np.abs(a - b).max(axis=2) > 24
    print("mouth", changed[mouth].mean(), "forehead", changed[forehead].mean(), "all", changed.mean())
    assert changed[mouth].mean() >= 0.10
    assert changed[forehead].mean() < 0.02
    # frame 0 at key00 against the backend's own renderer, on the head (its alpha); and the frame where
    # the expressions (morph targets) are strongest
    psnr = _psnr_vs_backend(tmp, bundle_path, key, 0, a)
    psnr_expr = _psnr_vs_backend(tmp, bundle_path, key, expr_frame, _img(out / f"frame_{expr_frame:04d}.png"))
    print(skin, "psnr", psnr, "expression frame", psnr_expr)
    assert psnr_expr >= 25.0, psnr_expr
    if skin == "gpu":
        _keep_shot(out / "frame_0000.png", "web_player_frame0.png")
        _keep_shot(out / f"frame_{open_frame:04d}.png", "web_player_jaw_open.png")
    assert psnr >= 25.0, psnr


def test_babylon_loads_the_glb_with_coloured_splats_and_the_proxy_hidden(exported):
    tmp, _, _ = exported
    _build("babylon")
    report, out = _drive(tmp, "babylon.html", tmp / "avatar.glb", [0], {"width": 320, "height": 320})
    assert report["errors"] == [], report["errors"]
    meshes = report["info"]["meshes"]
    splats = [m for m in meshes if "Splat" in m["class"]]
    assert splats and all(m["visible"] for m in splats), meshes
    assert not any(m["name"].startswith("head") and m["visible"] for m in meshes), meshes
    img = _img(out / "frame_0000.png")
    spread = img.max(axis=2) - img.min(axis=2)  # colour, not grey or white points
    assert (spread > 60).mean() > 0.02, (spread > 60).mean()
    _keep_shot(out / "frame_0000.png", "babylon_frame0.png")
