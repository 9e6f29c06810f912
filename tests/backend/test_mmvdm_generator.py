"""The MMVDM generator (backend/generators/mmvdm.py) through the whole plan on a tiny random MMVDM and tiny
VAE on the toy head: timing, reproducibility, cancel + resume, extensions, peer samplers, errors."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLCogVideoX

from backend.cameras import CameraRing, orbit_camera, ring_preset
from backend.errors import Cancelled, MVP4DError
from backend.flame import Flame, FlameParams, load_flame
from backend.generators.mmvdm import MMVDMGenerator, MMVDMSettings, pass_seed
from backend.mmvdm.configs import mmvdm_2b_config, tiny_config, tiny_vae_config
from backend.mmvdm.plan import build_plan
from backend.mmvdm.transformer import MMVDMTransformer
from backend.mmvdm.weights import MMVDMComponents

RES = 64
CENTER = (0.0, -0.035, 0.0)


@pytest.fixture(scope="module")
def components():
    torch.manual_seed(0)
    transformer = MMVDMTransformer.from_config(tiny_config()).eval()
    vae = AutoencoderKLCogVideoX(**tiny_vae_config()).eval()
    return MMVDMComponents(transformer, vae, {})


@pytest.fixture(scope="module")
def flame():
    return Flame(load_flame("toy"))


@pytest.fixture(scope="module")
def scene(flame):
    """4 views (2 keys + 1 cluster of 2), a reference crop camera and photo, an animation of 13 frames."""
    cams = [orbit_camera(az, el, center=CENTER, distance=1.0, focal_px=3 * RES, resolution=RES, name=n, key=k)
            for az, el, n, k in ((-20, 5, "key00", True), (20, 5, "key01", True), (-35, 0, "view00", False),
                                 (35, 0, "view01", False))]
    ring = CameraRing.from_cameras(cams, center=CENTER)
    ref_cam = orbit_camera(0, 0, center=CENTER, distance=1.0, focal_px=3 * RES, resolution=RES, name="ref")
    g = torch.Generator().manual_seed(0)
    params = FlameParams.zeros(flame, 13)
    params.expr[:, :3] = torch.linspace(-1, 1, 13)[:, None] * torch.tensor([1.0, 0.5, -0.5])
    params.jaw_pose[:, 0] = torch.linspace(0, 0.2, 13)
    ref_image = (torch.rand(RES, RES, 3, generator=g) * 255).to(torch.uint8).numpy()
    return SimpleNamespace(ring=ring, ref_cam=ref_cam, params=params, ref_params=FlameParams.zeros(flame, 1),
                           ref_image=ref_image)


def _frames(params: FlameParams, n: int) -> FlameParams:
    return FlameParams(shape=params.shape, **{k: getattr(params, k)[:n] for k in
                                             ("expr", "global_rot", "neck_pose", "jaw_pose", "eye_pose", "transl")})


def _generate(components, flame, scene, tmp: Path, frames: int = 9, check=None, progress=None, **settings):
    params = _frames(scene.params, frames)
    with torch.no_grad():
        verts = flame(params).vertices
    gen = MMVDMGenerator(settings=MMVDMSettings(**settings), components=components)
    logs = []
    info = gen.generate(scene.ring, verts, flame, params, scene.ref_params, scene.ref_cam, scene.ref_image,
                        tmp / "views", tmp / "state", progress=progress, check=check, log=logs.append)
    return info, logs


def _read_views(folder: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    return {d.name: np.stack([np.asarray(Image.open(p)) for p in sorted(d.glob("*.png"))])
            for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")}


def test_full_plan_4_views_9_frames_is_fast_and_reproducible(components, flame, scene, tmp_path):
    seen = []
    t0 = time.time()
    info, logs = _generate(components, flame, scene, tmp_path / "a", progress=lambda d, t: seen.append((d, t)))
    elapsed = time.time() - t0
    print(f"\ntiny MMVDM, 4 views x 9 frames at 64 px, full plan (100 + 50 steps, multi-view CFG): {elapsed:.1f} s")
    assert elapsed < 60
    assert info["passes"] == 2 and info["steps"] == 150 and seen[-1] == (150, 150)
    assert any("memory estimate" in m for m in logs) and any("w0-c00" in m for m in logs)
    views = _read_views(tmp_path / "a" / "views")
    assert sorted(views) == ["key00", "key01", "view00", "view01"]
    assert all(v.shape == (9, RES, RES, 3) and v.dtype == np.uint8 for v in views.values())
    assert (tmp_path / "a" / "state" / "w0-key.safetensors").is_file()
    _generate(components, flame, scene, tmp_path / "b")
    again = _read_views(tmp_path / "b" / "views")
    assert all(np.array_equal(views[k], again[k]) for k in views)  # reproducible bit for bit


def test_cancel_mid_pass_then_resume_is_identical(components, flame, scene, tmp_path):
    settings = dict(steps_key=6, steps_other=5, seed=3)
    _generate(components, flame, scene, tmp_path / "ref", **settings)
    expected = _read_views(tmp_path / "ref" / "views")
    calls = []

    def check():  # checks: 1 before the key pass + 6 steps + 2 decodes, 1 before the cluster pass, then
        calls.append(1)  # its steps: the 13th call cancels the cluster pass after 2 of its 5 steps
        if len(calls) == 13:
            raise Cancelled("test cancel")

    with pytest.raises(Cancelled):
        _generate(components, flame, scene, tmp_path / "run", check=check, **settings)
    state = tmp_path / "run" / "state"
    assert (state / "w0-key.safetensors").is_file() and not (state / "w0-c00.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "run" / "views").iterdir() if not p.name.startswith(".")) == [
        "key00", "key01"]  # key views complete, cluster views not written
    info, logs = _generate(components, flame, scene, tmp_path / "run", **settings)
    got = _read_views(tmp_path / "run" / "views")
    assert sorted(got) == sorted(expected)
    assert all(np.array_equal(expected[k], got[k]) for k in expected)
    # changed settings start over instead of mixing runs
    _, logs = _generate(components, flame, scene, tmp_path / "run", steps_key=2, steps_other=2, seed=4)
    assert any("settings changed" in m for m in logs)
    changed = _read_views(tmp_path / "run" / "views")
    assert not any(np.array_equal(expected[k], changed[k]) for k in expected)


def test_extension_windows_modes_3_and_4(components, flame, scene, tmp_path):
    settings = dict(steps_key=3, steps_other=2, window_frames=9, context_frames=5)
    plan = build_plan(scene.ring, 13, 3, 2, window_frames=9, context_frames=5)
    assert [p.mode for p in plan] == [1, 2, 3, 4]
    info, _ = _generate(components, flame, scene, tmp_path, frames=13, **settings)
    assert info["passes"] == 4
    views = _read_views(tmp_path / "views")
    assert all(v.shape == (13, RES, RES, 3) for v in views.values())
    assert sorted(p.name for p in (tmp_path / "state").glob("*.safetensors")) == [
        "w0-c00.safetensors", "w0-key.safetensors", "w1-c00.safetensors", "w1-key.safetensors"]


@pytest.mark.parametrize("settings", [dict(sampler="composed", vrs_steps_unused=None),
                                      dict(sampler="preview", refine_strength=0.5),
                                      dict(sampler="preview", refine_strength=0.0)])
def test_peer_samplers_through_the_generator(components, flame, scene, tmp_path, settings):
    settings = {k: v for k, v in settings.items() if k != "vrs_steps_unused"}
    info, _ = _generate(components, flame, scene, tmp_path, steps_key=4, steps_other=3, preview_steps=2, **settings)
    views = _read_views(tmp_path / "views")
    assert len(views) == 4 and all(v.shape == (9, RES, RES, 3) for v in views.values())
    if settings["sampler"] == "preview":
        assert (tmp_path / "state" / "preview-w0-key.safetensors").is_file()  # the dense all-views pass
        assert info["passes"] == (1 if settings["refine_strength"] == 0 else 3)


def test_weights_missing_and_bad_settings(tmp_path):
    with pytest.raises(MVP4DError) as e:
        MMVDMGenerator()
    assert e.value.code == "WEIGHTS_MISSING"
    with pytest.raises(MVP4DError) as e:
        MMVDMGenerator(tmp_path / "nothing-here")
    assert e.value.code == "WEIGHTS_MISSING"
    with pytest.raises(MVP4DError) as e:
        MMVDMGenerator.from_spec(SimpleNamespace(name="mmvdm", weights=None))
    assert e.value.code == "WEIGHTS_MISSING"
    with pytest.raises(MVP4DError) as e:
        MMVDMSettings(sampler="fast").validate()
    assert e.value.code == "BAD_INPUT"
    s = MMVDMSettings.from_spec(SimpleNamespace(seed=5, steps_key=10, steps_other=5, guidance="none", weights="/w"))
    assert (s.seed, s.steps_key, s.guidance, s.sampler) == (5, 10, "none", "joint")
    low = MMVDMSettings.from_spec(SimpleNamespace(vram="low", vae_tiling=False, weights="/w"))
    assert (low.offload, low.vae_tiling, low.cfg_passes) == ("model", False, "sequential")
    with pytest.raises(MVP4DError):
        MMVDMSettings.from_spec(SimpleNamespace(vram="huge"))
    assert pass_seed(0, "w0-key") == pass_seed(0, "w0-key") != pass_seed(1, "w0-key") != pass_seed(0, "w0-c00")


@pytest.mark.parametrize("field", ["guidance", "sampler", "dtype", "offload", "cfg_passes", "cfg_angle"])
def test_every_settings_choice_is_checked(field):
    """An unknown value of any choice field is BAD_INPUT naming the field and the allowed values."""
    MMVDMSettings().validate()
    with pytest.raises(MVP4DError) as e:
        MMVDMSettings(**{field: "no-such-mode"}).validate()
    assert e.value.code == "BAD_INPUT"
    assert f"generator.{field} must be one of" in e.value.message and "'no-such-mode'" in e.value.message


def test_out_of_memory_names_a_setting_that_fits(monkeypatch):
    """The 2B config on the 120 preset with a pretend 24 GiB GPU that has 20 GiB free."""
    comp = SimpleNamespace(transformer=SimpleNamespace(config=mmvdm_2b_config()), vae=None, scheduler_config={})
    ring = ring_preset("120")
    plan = build_plan(ring, 89)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * 1024**3, 24 * 1024**3))
    gen = MMVDMGenerator(settings=MMVDMSettings(device="cuda", dtype="fp32"), components=comp)
    with pytest.raises(MVP4DError) as e:
        gen.check_memory(plan, ring, 512, log=lambda m: None)
    assert e.value.code == "OUT_OF_MEMORY" and "Use " in e.value.hint
    print("\n" + str(e.value))
    fits = MMVDMGenerator(settings=MMVDMSettings(device="cuda", dtype="bf16", vae_tiling=True), components=comp)
    est = fits.check_memory(plan, ring, 512, log=lambda m: None)
    assert est["peak"] <= est["free"]


def test_even_latent_counts_decode_to_1_plus_4k_frames(components, flame, scene, tmp_path):
    """5 frames = 2 latent frames (the tiny preset): the CogVideoX decoder needs the padding workaround."""
    info, _ = _generate(components, flame, scene, tmp_path, frames=5, steps_key=2, steps_other=2)
    views = _read_views(tmp_path / "views")
    assert all(v.shape == (5, RES, RES, 3) for v in views.values())
