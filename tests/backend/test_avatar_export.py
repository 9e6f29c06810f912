"""Exports (backend/avatar/export.py) read back with plyfile, property by property."""

from __future__ import annotations

import dataclasses
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData

from backend.avatar.binding import LocalGaussians, local_to_world
from backend.avatar.binding_np import local_to_world_np
from backend.avatar.bundle import write_bundle
from backend.avatar.export import export_bundle, export_cap4d_animated, export_ply, main, ply_bytes
from backend.errors import MVP4DError

from .avatar_helpers import toy_bundle

T, N, DEG = 3, 800, 3
K = (DEG + 1) ** 2


@pytest.fixture(scope="module")
def bundle():
    return toy_bundle(num_frames=T, num_gaussians=N, sh_degree=DEG, detail=True)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory, bundle) -> Path:
    return write_bundle(tmp_path_factory.mktemp("b") / "avatar.safetensors", bundle)


def torch_world(bundle, t):
    """The fit's torch binding on the bundle's (float16) vertices: the reference for every export."""
    local = LocalGaussians(*(torch.from_numpy(getattr(bundle, f).astype(np.float64 if f != "parent_face" else np.int64))
                             for f in ("parent_face", "local_position", "local_rotation", "log_scale",
                                       "opacity_logit", "sh")))
    off = None if bundle.detail_offsets is None else torch.from_numpy(bundle.detail_offsets[t].astype(np.float64))
    return local_to_world(local, torch.from_numpy(bundle.vertices[t].astype(np.float64)),
                          torch.from_numpy(bundle.faces.astype(np.int64)), detail_offsets=off)


def column(el, name):
    return np.asarray(el[name])


def check_3dgs_ply(path_or_bytes, bundle, t):
    ply = PlyData.read(io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes)
    assert [e.name for e in ply.elements] == ["vertex"]
    v = ply["vertex"]
    expect_names = (["x", "y", "z"] + [f"f_dc_{i}" for i in range(3)] + [f"f_rest_{i}" for i in range(3 * (K - 1))]
                    + ["opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])
    assert [p.name for p in v.properties] == expect_names
    assert all(p.val_dtype in ("f4", "float32") for p in v.properties)
    assert v.count == N
    w = torch_world(bundle, t)
    xyz = np.stack([column(v, a) for a in "xyz"], -1)
    np.testing.assert_allclose(xyz, w.means.numpy(), atol=1e-6, rtol=0)
    scale = np.stack([column(v, f"scale_{i}") for i in range(3)], -1)
    np.testing.assert_allclose(scale, np.log(w.scales.numpy()), atol=1e-5, rtol=0)
    np.testing.assert_allclose(column(v, "opacity"), bundle.opacity_logit, atol=0)
    np.testing.assert_allclose(1 / (1 + np.exp(-column(v, "opacity"))), w.opacities.numpy(), atol=1e-6)
    rot = np.stack([column(v, f"rot_{i}") for i in range(4)], -1)
    sign = np.sign(np.sum(rot * w.quats.numpy(), -1, keepdims=True))
    np.testing.assert_allclose(rot, sign * w.quats.numpy(), atol=1e-6, rtol=0)
    for c in range(3):
        np.testing.assert_array_equal(column(v, f"f_dc_{c}"), bundle.sh[:, 0, c])
        for k in range(1, K):  # channel-major: all of R's coefficients, then G's, then B's
            np.testing.assert_array_equal(column(v, f"f_rest_{c * (K - 1) + k - 1}"), bundle.sh[:, k, c])


def test_ply_of_a_frame_matches_the_world_gaussians(tmp_path, bundle, bundle_path):
    out = export_bundle(bundle_path, "ply", tmp_path / "avatar.ply", frame=2)
    assert out == [tmp_path / "avatar.ply"]
    check_3dgs_ply(str(out[0]), bundle, 2)
    # frames differ (the head moves), frame 0 is the default
    assert ply_bytes(bundle, 0) != ply_bytes(bundle, 2)
    export_ply(bundle, tmp_path / "f0.ply")
    check_3dgs_ply(str(tmp_path / "f0.ply"), bundle, 0)


def test_frame_outside_the_sequence_is_refused(tmp_path, bundle_path):
    with pytest.raises(MVP4DError, match="outside"):
        export_bundle(bundle_path, "ply", tmp_path / "x.ply", frame=T)
    with pytest.raises(MVP4DError, match="unknown export format"):
        export_bundle(bundle_path, "obj", tmp_path / "x.obj")
    assert not (tmp_path / "x.ply").exists()


def test_ply_sequence_has_one_file_per_frame(tmp_path, bundle, bundle_path):
    out = export_bundle(bundle_path, "ply-sequence", tmp_path / "frames")
    assert [p.name for p in out] == [f"{t:04d}.ply" for t in range(T)]
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [".mvp4d-output.json"] + [
        f"{t:04d}.ply" for t in range(T)]  # the marker says which files are ours
    for t in range(T):
        check_3dgs_ply(str(out[t]), bundle, t)


@pytest.mark.parametrize("compress", [True, False])
def test_cap4d_animated_ply_layout_and_dequantisation(tmp_path, bundle, bundle_path, compress):
    out = export_bundle(bundle_path, "cap4d-animated", tmp_path / "anim.ply", compress=compress)[0]
    ply = PlyData.read(str(out))
    frames = [s for t in range(T) for s in (f"meta_delta_min_{t:05d}", f"meta_delta_max_{t:05d}", f"delta_vertex_{t:05d}")]
    assert [e.name for e in ply.elements] == ["faces", "base_vertex", "vertex"] + frames
    faces = ply["faces"]
    assert [p.name for p in faces.properties] == ["index_0", "index_1", "index_2"]
    assert all(p.val_dtype in ("u4", "uint32") for p in faces.properties)
    np.testing.assert_array_equal(np.stack([column(faces, f"index_{i}") for i in range(3)], -1), bundle.faces)
    verts = bundle.vertices.astype(np.float32)
    base = np.stack([column(ply["base_vertex"], a) for a in "xyz"], -1)
    np.testing.assert_array_equal(base, verts[0])
    v = ply["vertex"]
    names = (["x", "y", "z"] + [f"f_dc_{i}" for i in range(3)] + [f"f_rest_{i}" for i in range(3 * (K - 1))]
             + ["opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)] + ["binding"])
    assert [p.name for p in v.properties] == names
    np.testing.assert_array_equal(np.stack([column(v, a) for a in "xyz"], -1), bundle.local_position)
    np.testing.assert_array_equal(np.stack([column(v, f"scale_{i}") for i in range(3)], -1), bundle.log_scale)
    np.testing.assert_array_equal(np.stack([column(v, f"rot_{i}") for i in range(4)], -1), bundle.local_rotation)
    np.testing.assert_array_equal(column(v, "opacity"), bundle.opacity_logit)
    np.testing.assert_array_equal(column(v, "binding").astype(np.int32), bundle.parent_face)
    for c in range(3):
        np.testing.assert_array_equal(column(v, f"f_dc_{c}"), bundle.sh[:, 0, c])
        np.testing.assert_array_equal(column(v, f"f_rest_{c * (K - 1) + K - 2}"), bundle.sh[:, K - 1, c])
    for t in range(T):
        lo = np.array([column(ply[f"meta_delta_min_{t:05d}"], a)[0] for a in "xyz"])
        hi = np.array([column(ply[f"meta_delta_max_{t:05d}"], a)[0] for a in "xyz"])
        d = ply[f"delta_vertex_{t:05d}"]
        assert all(p.val_dtype in (("u1", "uint8") if compress else ("f4", "float32")) for p in d.properties)
        q = np.stack([column(d, a) for a in "xyz"], -1).astype(np.float64)
        q = q / 255.0 if compress else q
        decoded = base + lo + q * (hi - lo)  # what the viewer does
        err = np.abs(decoded - verts[t])
        bound = (hi - lo) / 255.0 / 2.0 if compress else np.full(3, 0.0)
        assert np.all(err <= bound + 1e-6), (t, err.max(0), bound)
        if t > 0:
            assert np.all(hi > lo)  # the head moves between frames
    # the viewer re-derives the splats from the decoded mesh with the same triangle frame
    t = T - 1
    lo = np.array([column(ply[f"meta_delta_min_{t:05d}"], a)[0] for a in "xyz"])
    hi = np.array([column(ply[f"meta_delta_max_{t:05d}"], a)[0] for a in "xyz"])
    q = np.stack([column(ply[f"delta_vertex_{t:05d}"], a) for a in "xyz"], -1).astype(np.float64)
    mesh_t = base + lo + (q / 255.0 if compress else q) * (hi - lo)
    means, _, _ = local_to_world_np(column(v, "binding").astype(np.int64), bundle.local_position,
                                    bundle.local_rotation, bundle.log_scale, mesh_t, bundle.faces)
    plain = dataclasses.replace(bundle, detail_offsets=None)
    err = np.linalg.norm(means - torch_world(plain, t).means.numpy(), axis=-1)
    if compress:  # 8-bit vertex deltas tilt small triangles a little: sub-millimetre on a 20 cm head
        assert err.max() < 2e-3 and err.mean() < 3e-4, (err.max(), err.mean())
    else:
        assert err.max() < 1e-6


def test_animated_export_warns_that_detail_offsets_are_left_out(tmp_path, bundle):
    warnings = []
    export_cap4d_animated(bundle, tmp_path / "a.ply", warn=warnings.append)
    assert len(warnings) == 1 and "detail" in warnings[0]


def test_failed_writes_leave_nothing_under_the_final_name(tmp_path, bundle, bundle_path, monkeypatch):
    def disk_full(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(Path, "write_bytes", disk_full)
        with pytest.raises(MVP4DError, match="No space left"):
            export_bundle(bundle_path, "ply", tmp_path / "avatar.ply")
        with pytest.raises(MVP4DError, match="No space left"):
            export_bundle(bundle_path, "ply-sequence", tmp_path / "frames")

    def ply_disk_full(self, stream):
        stream.write(b"ply\nformat binary_little_endian 1.0\n")
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(PlyData, "write", ply_disk_full)
        with pytest.raises(MVP4DError, match="No space left"):
            export_bundle(bundle_path, "cap4d-animated", tmp_path / "anim.ply")
    assert list(tmp_path.iterdir()) == []  # no final files, no partial temporaries


def test_cli_main_reports_events(tmp_path, bundle_path):
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main([str(bundle_path), "--format", "ply", "--out", str(tmp_path / "a.ply"), "--frame", "1"])
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert rc == 0 and events[-1]["type"] == "done" and events[-1]["outputs"] == {"ply": str(tmp_path / "a.ply")}
    assert (tmp_path / "a.ply").is_file()
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main([str(tmp_path / "missing.safetensors"), "--format", "ply", "--out", str(tmp_path / "b.ply")])
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert rc != 0 and events[-1]["type"] == "error" and events[-1]["code"] == "BAD_INPUT"
