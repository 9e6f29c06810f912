"""avatar.safetensors (backend/avatar/bundle.py): exact round trip, every refusal, no torch import."""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.avatar.bundle import TENSOR_SPECS, AvatarBundle, read_bundle, write_bundle
from backend.errors import MVP4DError
from backend.protocol import BUNDLE_METADATA_KEYS, BUNDLE_OPTIONAL, BUNDLE_SCHEMA_VERSION, BUNDLE_TENSORS

from .avatar_helpers import toy_bundle

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle() -> AvatarBundle:
    return toy_bundle(num_frames=3, num_gaussians=500, sh_degree=2)


def _refused(path: Path, *words: str) -> MVP4DError:
    with pytest.raises(MVP4DError) as e:
        read_bundle(path)
    assert e.value.code == "BAD_INPUT"
    for w in words:
        assert w in e.value.message, e.value.message
    return e.value


def _write_raw(path: Path, tensors: dict, metadata: dict) -> Path:
    """Write a safetensors file directly, bypassing write_bundle's validation."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path,
              metadata={k: json.dumps(v) for k, v in metadata.items()})
    return path


def test_specs_follow_the_protocol():
    assert set(TENSOR_SPECS) == set(BUNDLE_TENSORS)
    assert TENSOR_SPECS["gaussians.parent_face"] == (("N",), np.dtype("int32"))
    assert TENSOR_SPECS["animation.vertices"] == (("T", "V", "3"), np.dtype("float16"))
    assert TENSOR_SPECS["gaussians.sh"] == (("N", "K", "3"), np.dtype("float32"))
    names = {f.name for f in dataclasses.fields(AvatarBundle)} - {"metadata"}
    assert names == {n.split(".")[-1] for n in BUNDLE_TENSORS}


def test_round_trip_is_exact(tmp_path, bundle):
    path = write_bundle(tmp_path / "avatar.safetensors", bundle)
    back = read_bundle(path)
    for name, a in bundle.tensors().items():
        b = back.tensors()[name]
        assert b.dtype == TENSOR_SPECS[name][1] and b.shape == a.shape
        np.testing.assert_array_equal(b, a)
    assert back.metadata == bundle.metadata
    assert back.metadata["schema_version"] == BUNDLE_SCHEMA_VERSION and back.num_frames == 3
    assert back.sh_degree == 2 and back.fps == 24.0
    assert not list(tmp_path.glob(".*part*"))  # no leftovers of the atomic write


def test_optional_detail_offsets_may_be_absent(tmp_path, bundle):
    plain = dataclasses.replace(bundle, detail_offsets=None)
    back = read_bundle(write_bundle(tmp_path / "a.safetensors", plain))
    assert back.detail_offsets is None
    assert "animation.detail_offsets" in BUNDLE_OPTIONAL


def test_build_casts_to_the_contract_dtypes(bundle):
    arrays = {k: v.astype(np.float64) if v.dtype.kind == "f" else v.astype(np.int64)
              for k, v in bundle.tensors().items()}
    b = AvatarBundle.build(arrays, {k: v for k, v in bundle.metadata.items() if k not in ("num_frames",)})
    assert b.parent_face.dtype == np.int32 and b.vertices.dtype == np.float16 and b.sh.dtype == np.float32
    assert b.metadata["num_frames"] == 3


def test_stored_metadata_is_json_per_key(tmp_path, bundle):
    path = write_bundle(tmp_path / "a.safetensors", bundle)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8:8 + n])["__metadata__"]
    assert set(meta) == set(BUNDLE_METADATA_KEYS)
    assert all(isinstance(v, str) for v in meta.values())
    assert json.loads(meta["camera_ring"]) == {"preset": "tiny", "num_views": 6}
    assert json.loads(meta["schema_version"]) == BUNDLE_SCHEMA_VERSION


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda t, m: t.pop("gaussians.opacity_logit"), ["gaussians.opacity_logit", "missing"]),
        (lambda t, m: t.update({"gaussians.parent_face": t["gaussians.parent_face"].astype(np.int64)}),
         ["gaussians.parent_face", "int32", "int64"]),
        (lambda t, m: t.update({"animation.vertices": t["animation.vertices"].astype(np.float32)}),
         ["animation.vertices", "float16"]),
        (lambda t, m: t.update({"gaussians.parent_face": t["gaussians.parent_face"] + 100000}),
         ["gaussians.parent_face", "faces"]),
        (lambda t, m: t.update({"mesh.faces": t["mesh.faces"] + 10**6}), ["mesh.faces", "vertices"]),
        (lambda t, m: m.update({"num_frames": 5}), ["num_frames", "5", "3 frames"]),
        (lambda t, m: t.update({"animation.expr": t["animation.expr"][:2]}), ["animation.expr", "T"]),
        (lambda t, m: t.update({"gaussians.local_position": t["gaussians.local_position"][:, :2]}),
         ["gaussians.local_position", "shape"]),
        (lambda t, m: t.update({"gaussians.sh": t["gaussians.sh"][:, :5]}), ["gaussians.sh", "K = 5"]),
        (lambda t, m: t.update({"gaussians.log_scale": np.full_like(t["gaussians.log_scale"], np.nan)}),
         ["gaussians.log_scale", "NaN"]),
        (lambda t, m: t.update({"extra.thing": np.zeros(3, np.float32)}), ["extra.thing", "not part"]),
        (lambda t, m: m.pop("fps"), ["fps", "missing"]),
        (lambda t, m: m.update({"fps": -1}), ["fps", "positive"]),
        (lambda t, m: m.update({"schema_version": BUNDLE_SCHEMA_VERSION + 1}), ["schema_version", "newer"]),
    ],
    ids=["missing", "dtype-int", "dtype-half", "parent-range", "face-range", "num-frames", "frame-count",
         "shape", "sh-k", "nan", "unknown-tensor", "no-fps", "bad-fps", "newer-schema"],
)
def test_refuses_a_broken_bundle_naming_the_problem(tmp_path, bundle, mutate, words):
    tensors = {k: v.copy() for k, v in bundle.tensors().items()}
    meta = dict(bundle.metadata)
    mutate(tensors, meta)
    err = _refused(_write_raw(tmp_path / "bad.safetensors", tensors, meta), *words)
    if "newer" in words:
        assert "Update" in err.hint


def test_refuses_non_bundles(tmp_path):
    _refused(tmp_path / "nope.safetensors", "no avatar bundle")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    _refused(junk, "not a safetensors file")
    png = tmp_path / "photo.safetensors"  # a picture under a bundle's name: said plainly, no codec jargon
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(128, 256)) * 4)
    err = _refused(png, "it is a PNG image")
    assert "codec" not in err.message
    notmeta = tmp_path / "other.safetensors"
    _write_raw(notmeta, {"x": np.zeros(3, np.float32)}, {})
    _refused(notmeta, "schema_version")


def test_write_refuses_an_invalid_bundle_and_leaves_nothing(tmp_path, bundle):
    bad = dataclasses.replace(bundle, parent_face=bundle.parent_face.astype(np.int64))
    with pytest.raises(MVP4DError, match="int32"):
        write_bundle(tmp_path / "a.safetensors", bad)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_file_under_the_final_name(tmp_path, bundle, monkeypatch):
    import safetensors.numpy

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", disk_full)
    with pytest.raises(OSError):
        write_bundle(tmp_path / "avatar.safetensors", bundle)
    assert list(tmp_path.iterdir()) == []


def test_reader_does_not_import_torch(tmp_path, bundle):
    path = write_bundle(tmp_path / "a.safetensors", bundle)
    code = (
        "import sys; from backend.avatar.bundle import read_bundle; "
        f"b = read_bundle({str(path)!r}); "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m); print(b.num_frames)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"
