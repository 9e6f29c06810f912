"""Multi-view CFG (paper §5): the scale grows with the angle to the input reference image by default;
the earlier "closest reference view" reading (key views count) stays selectable."""

from __future__ import annotations


import pytest
import torch
from diffusers import AutoencoderKLCogVideoX

import backend.generators.mmvdm_passes as passes
from backend.cameras import CameraRing, orbit_camera, ring_preset
from backend.errors import MVP4DError
from backend.flame import Flame, FlameParams, load_flame
from backend.generators.mmvdm import MMVDMGenerator, MMVDMSettings
from backend.mmvdm.configs import tiny_config, tiny_vae_config
from backend.mmvdm.guidance_angle import cfg_angle
from backend.mmvdm.sampler import guidance_scale
from backend.mmvdm.transformer import MMVDMTransformer
from backend.mmvdm.weights import MMVDMComponents
from backend.protocol import GeneratorSpec

RES = 64
CENTER = (0.0, -0.035, 0.0)


def test_back_view_next_to_a_key_view():
    ring = ring_preset("360")
    ref = orbit_camera(0, 0, distance=1.0)  # the photo: frontal
    back = next(i for i, (a, e) in enumerate(ring.azimuth_elevation) if e == 0 and abs(abs(a) - 165) < 1e-6)
    keys = [ring.cameras[k] for k in ring.key_indices]
    paper = cfg_angle(ring.cameras[back], ref, keys, ring.center)
    assert paper == pytest.approx(165, abs=1e-6) and guidance_scale(paper) > 1.55
    closest = cfg_angle(ring.cameras[back], ref, keys, ring.center, mode="closest_reference")
    assert closest < 30 and guidance_scale(closest) < 1.2
    # the reference image's own direction gets the minimum either way; a view is never its own reference
    assert cfg_angle(ref, ref, keys) == pytest.approx(0, abs=1e-6)
    assert cfg_angle(keys[3], ref, keys, mode="closest_reference") > 20
    with pytest.raises(MVP4DError, match="cfg_angle"):
        cfg_angle(ref, ref, keys, mode="keys")


def test_job_setting_default_and_validation():
    assert GeneratorSpec.from_json({}).cfg_angle == "reference_image"
    assert GeneratorSpec.from_json({"cfg_angle": "closest_reference"}).cfg_angle == "closest_reference"
    with pytest.raises(MVP4DError):
        GeneratorSpec.from_json({"cfg_angle": "nearest"})
    spec = GeneratorSpec.from_json({"name": "mmvdm", "cfg_angle": "closest_reference"})
    assert MMVDMSettings.from_spec(spec).cfg_angle == "closest_reference"
    assert MMVDMSettings().cfg_angle == "reference_image"
    with pytest.raises(MVP4DError):
        MMVDMSettings(cfg_angle="x").validate()


@pytest.mark.parametrize("mode, cluster_angle", [("reference_image", 35.0), ("closest_reference", 15.0)])
def test_generator_passes_the_chosen_scales_to_the_sampler(monkeypatch, tmp_path, mode, cluster_angle):
    torch.manual_seed(0)
    comps = MMVDMComponents(MMVDMTransformer.from_config(tiny_config()).eval(),
                            AutoencoderKLCogVideoX(**tiny_vae_config()).eval(), {})
    flame = Flame(load_flame("toy"))
    cams = [orbit_camera(az, 0, center=CENTER, distance=1.0, focal_px=3 * RES, resolution=RES, name=n, key=k)
            for az, n, k in ((-20, "key00", True), (20, "key01", True), (-35, "view00", False), (35, "view01", False))]
    ring = CameraRing.from_cameras(cams, center=CENTER)
    ref_cam = orbit_camera(0, 0, center=CENTER, distance=1.0, focal_px=3 * RES, resolution=RES, name="ref")
    params = FlameParams.zeros(flame, 5)
    with torch.no_grad():
        verts = flame(params).vertices
    seen = []
    real = passes.sample

    def spy(*a, **kw):
        seen.append([float(x) for x in kw["guidance_scale"]])
        return real(*a, **kw)

    monkeypatch.setattr(passes, "sample", spy)
    gen = MMVDMGenerator(settings=MMVDMSettings(steps_key=1, steps_other=1, cfg_angle=mode), components=comps)
    ref_image = (torch.rand(RES, RES, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    gen.generate(ring, verts, flame, params, FlameParams.zeros(flame, 1), ref_cam, ref_image,
                 tmp_path / "views", tmp_path / "state", log=lambda m: None)
    key_pass, cluster_pass = seen
    assert key_pass == pytest.approx([guidance_scale(20.0)] * 2, abs=1e-6)
    # the cluster pass: its clean key views first (their scale is unused), then the two generated views
    assert len(cluster_pass) == 4
    assert cluster_pass[2:] == pytest.approx([guidance_scale(cluster_angle)] * 2, abs=1e-6)
