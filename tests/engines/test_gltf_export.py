"""The rigged .glb: skinned, morphing splats that follow the head, checked against the binding itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.avatar.binding_np import local_to_world_np
from backend.avatar.bundle import write_bundle
from backend.avatar.export import main as export_main
from backend.engines.gltf import GlbOptions, write_avatar_glb
from backend.engines.gltf_builder import read_accessor, read_glb
from backend.engines.gltf_splats import SH_C0, srgb_to_linear
from backend.engines.rig_np import rig_from_bundle, splats_from_bundle
from backend.flame import load_flame
from tests.backend.avatar_helpers import toy_bundle

from .gltf_eval import posed_positions

REPO = Path(__file__).resolve().parents[2]
VALIDATOR = REPO / "tools" / "validate_gltf.js"
HAVE_VALIDATOR = shutil.which("node") is not None and (REPO / "tools" / "node_modules" / "gltf-validator").is_dir()


@pytest.fixture(scope="module")
def bundle():
    return toy_bundle(num_frames=4, num_gaussians=1500, sh_degree=1, detail=True)


@pytest.fixture(scope="module")
def parts(bundle):
    return rig_from_bundle(bundle, load_flame("toy")), splats_from_bundle(bundle, 0)


def _glb(tmp_path, parts, **opts) -> tuple[dict, bytes]:
    rig, splats = parts
    path = write_avatar_glb(tmp_path / "a.glb", rig, splats, GlbOptions(**opts))
    return read_glb(path)


def _node(doc: dict, name: str) -> int:
    return [n["name"] for n in doc["nodes"]].index(name)


def _true_splats(bundle, t: int) -> np.ndarray:
    local = bundle.local_position + bundle.detail_offsets[0]  # the baked frame's fine detail
    return local_to_world_np(bundle.parent_face, local, bundle.local_rotation, bundle.log_scale,
                             bundle.vertices[t], bundle.faces)[0]


def test_skinned_splats_follow_the_head_in_every_frame(tmp_path, bundle, parts):
    doc, blob = _glb(tmp_path, parts, proxy="hidden", splats="skinned")
    head, splats = _node(doc, "head"), _node(doc, "splats")
    assert doc["nodes"][splats]["skin"] == doc["nodes"][head]["skin"] == 0
    for t in range(bundle.num_frames):
        # the head (skin + morph targets, evaluated as an engine does) is the bundle's posed mesh
        # (up to the joints, which FLAME regresses from the expressed mesh and glTF cannot: < 1 mm here)
        np.testing.assert_allclose(posed_positions(doc, blob, head, t), bundle.vertices[t], atol=1e-3)
        err = np.linalg.norm(posed_positions(doc, blob, splats, t) - _true_splats(bundle, t), axis=1)
        moved = np.linalg.norm(_true_splats(bundle, t) - _true_splats(bundle, 0), axis=1)
        # glTF morphs are linear and its joints do not follow expressions: a few mm at the extreme splats
        # of this deliberately wild toy (random expressions at 0.8 sigma, splats far off their triangle)
        assert np.median(err) < 1e-3 and np.percentile(err, 99) < 1e-2, (t, np.median(err), err.max())
        if t > 0:  # the splats really move, much more than the export's error
            assert np.percentile(moved, 90) > 20 * np.median(err) and moved.max() > 2e-2


def test_splat_morph_targets_are_the_binding_under_each_blendshape(tmp_path, bundle, parts):
    rig, splats = parts
    doc, blob = _glb(tmp_path, parts)
    node = doc["nodes"][_node(doc, "splats")]
    prim = doc["meshes"][node["mesh"]]["primitives"][0]
    assert len(prim["targets"]) == len(rig.target_names) == len(doc["meshes"][node["mesh"]]["weights"])
    rest = read_accessor(doc, blob, prim["attributes"]["POSITION"])
    local = bundle.local_position + bundle.detail_offsets[0]
    want_rest = local_to_world_np(bundle.parent_face, local, bundle.local_rotation, bundle.log_scale,
                                  bundle.rest_vertices, bundle.faces)[0]
    np.testing.assert_allclose(rest, want_rest, atol=1e-6)
    for k in (0, rig.target_names.index("smile"), len(rig.target_names) - 1):
        moved = local_to_world_np(bundle.parent_face, local, bundle.local_rotation, bundle.log_scale,
                                  bundle.rest_vertices + rig.target_deltas[k], bundle.faces)[0]
        np.testing.assert_allclose(read_accessor(doc, blob, prim["targets"][k]["POSITION"]), moved - want_rest,
                                   atol=1e-6)
    # one animation drives the morph weights of head and splats with the same values
    chans = {ch["target"]["node"]: ch for ch in doc["animations"][0]["channels"] if ch["target"]["path"] == "weights"}
    assert set(chans) == {_node(doc, "head"), _node(doc, "splats")}
    outs = {doc["animations"][0]["samplers"][c["sampler"]]["output"] for c in chans.values()}
    assert len(outs) == 1
    # skin weights: the parent triangle's mean LBS weights, strongest 4, summing to 1
    w = read_accessor(doc, blob, prim["attributes"]["WEIGHTS_0"])
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)


def test_color0_is_the_linear_sh0_colour_with_opacity(tmp_path, bundle, parts):
    doc, blob = _glb(tmp_path, parts, splats="static")
    prim = doc["meshes"][doc["nodes"][_node(doc, "splats")]["mesh"]]["primitives"][0]
    c = read_accessor(doc, blob, prim["attributes"]["COLOR_0"])
    want = srgb_to_linear(0.5 + SH_C0 * bundle.sh[:, 0, :])
    np.testing.assert_allclose(c[:, :3], want, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(c[:, 3], 1 / (1 + np.exp(-bundle.opacity_logit)), atol=0.5 / 255 + 1e-6)
    # static: the baked frame's posed splats, no skin, no targets
    assert "skin" not in doc["nodes"][_node(doc, "splats")] and "targets" not in prim
    np.testing.assert_allclose(read_accessor(doc, blob, prim["attributes"]["POSITION"]), _true_splats(bundle, 0),
                               atol=1e-6)


def test_proxy_modes(tmp_path, parts):
    doc, _ = _glb(tmp_path, parts, proxy="none")
    assert "head" not in [n["name"] for n in doc["nodes"]] and doc["skins"][0]["joints"]
    assert doc["nodes"][_node(doc, "splats")]["skin"] == 0 and "materials" not in doc
    doc, _ = _glb(tmp_path, parts, proxy="visible")
    head = doc["nodes"][_node(doc, "head")]
    assert "extensions" not in head
    prim = doc["meshes"][head["mesh"]]["primitives"][0]
    assert "NORMAL" in prim["attributes"]
    assert doc["materials"][prim["material"]]["pbrMetallicRoughness"]["metallicFactor"] == 0.0
    doc, _ = _glb(tmp_path, parts, proxy="hidden")
    assert doc["nodes"][_node(doc, "head")]["extensions"]["KHR_node_visibility"] == {"visible": False}
    assert "KHR_node_visibility" in doc["extensionsUsed"] and "extensionsRequired" not in doc
    with pytest.raises(ValueError):
        GlbOptions(proxy="transparent")
    with pytest.raises(ValueError):
        GlbOptions(splats="baked")


def test_rigid_groups_follow_their_joint(tmp_path, bundle, parts):
    doc, blob = _glb(tmp_path, parts, splats="rigid")
    groups = [i for i, n in enumerate(doc["nodes"]) if n["name"].startswith("splats_")]
    assert len(groups) >= 2  # at least head and jaw
    jaw = _node(doc, "jaw")
    assert _node(doc, "splats_jaw") in doc["nodes"][jaw]["children"]
    t = bundle.num_frames - 1
    idx = np.concatenate([read_accessor(doc, blob, doc["meshes"][doc["nodes"][g]["mesh"]]["primitives"][0]
                                        ["attributes"]["_BINDING_FACE_XYZ"])[:, 0] for g in groups])
    got = np.concatenate([posed_positions(doc, blob, g, t) for g in groups])
    true = _true_splats(bundle, t)
    # rigid: no expressions, but each group moves with its joint (the jaw opens)
    order = np.argsort(np.argsort(bundle.parent_face, kind="stable"), kind="stable")
    err = np.linalg.norm(got[np.argsort(idx, kind="stable")][order] - true, axis=1)
    still = np.linalg.norm(_true_splats(bundle, 0) - true, axis=1)
    assert np.median(err) < np.median(still)


@pytest.mark.skipif(not HAVE_VALIDATOR, reason="node + gltf-validator are installed by `make test` (tools/node_modules)")
@pytest.mark.parametrize("proxy,splats", [("hidden", "skinned"), ("visible", "rigid"), ("none", "static")])
def test_khronos_validator_accepts_every_mode(tmp_path, parts, proxy, splats):
    rig, s = parts
    path = write_avatar_glb(tmp_path / "a.glb", rig, s, GlbOptions(proxy=proxy, splats=splats))
    out = subprocess.run(["node", str(VALIDATOR), str(path)], capture_output=True, text=True, timeout=120)
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["numErrors"] == 0, json.dumps(report["errors"], indent=1)[:3000]
    assert report["excused"] and all(e["pointer"].split("/")[-1].startswith("KHR_gaussian_splatting:")
                                     for e in report["excused"])


def test_cli_exports_glb_and_refuses_an_unknown_head_model(tmp_path, bundle, capsys):
    src = write_bundle(tmp_path / "avatar.safetensors", bundle)
    assert export_main([str(src), "--format", "glb", "--out", str(tmp_path / "a.glb"), "--proxy", "none"]) == 0
    doc, _ = read_glb(tmp_path / "a.glb")
    assert doc["animations"][0]["channels"] and "head" not in [n["name"] for n in doc["nodes"]]
    bundle.metadata["flame_model_id"] = "flame:flame2023:abc"
    other = write_bundle(tmp_path / "other.safetensors", bundle)
    bundle.metadata["flame_model_id"] = "toy:v1"
    capsys.readouterr()
    assert export_main([str(other), "--format", "glb", "--out", str(tmp_path / "b.glb")]) != 0
    err = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"error"' in line]
    assert err and err[-1]["code"] == "BAD_INPUT" and "--flame" in err[-1]["hint"]
    assert not (tmp_path / "b.glb").exists()


def test_the_writers_the_addon_uses_do_not_import_torch():
    code = ("import sys; import backend.engines.gltf, backend.engines.spz, backend.engines.exports; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0
