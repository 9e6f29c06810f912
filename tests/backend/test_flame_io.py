"""Loading FLAME files (backend.flame.io): safe pickles with chumpy/scipy, npz, errors naming the key."""

from __future__ import annotations

import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse

from backend.errors import MVP4DError
from backend.flame import build_toy_head, load_flame, save_flame_npz

V, F, J, S, E = 30, 40, 5, 300, 5  # FLAME files hold 300 shape components, then expressions


def flame_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny model with FLAME's keys and dtypes (shapedirs = 300 shape + 5 expression)."""
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(J), size=V)
    reg = rng.random((J, V)) * (rng.random((J, V)) > 0.5)
    reg[:, 0] += 0.1
    return {
        "v_template": rng.normal(size=(V, 3)) * 0.1,
        "f": rng.integers(0, V, size=(F, 3)).astype(np.uint32),
        "shapedirs": rng.normal(size=(V, 3, S + E)) * 0.01,
        "posedirs": rng.normal(size=(V, 3, 36)) * 0.01,
        "J_regressor": reg / reg.sum(1, keepdims=True),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "weights": w,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


class _FakeCh:
    """Pickles like chumpy.ch.Ch: a bare object whose __dict__ holds the array under 'x'."""

    def __init__(self, x: np.ndarray):
        self.x = x
        self._dirty_vars = {"x"}
        self._itr = None
        self._depends_on_deps = {}


def write_flame_pickle(path, arrays: dict, protocol: int = 2) -> None:
    """Write arrays like FLAME's pkl: chumpy Ch wrappers and a scipy.sparse csc J_regressor."""
    d = dict(arrays)
    for k in ("v_template", "shapedirs", "posedirs", "weights"):
        if k in d:
            d[k] = _FakeCh(d[k])
    if "J_regressor" in d:
        d["J_regressor"] = scipy.sparse.csc_matrix(d["J_regressor"])
    ch_mod = types.ModuleType("chumpy.ch")
    pkg = types.ModuleType("chumpy")
    pkg.ch = ch_mod
    ch_mod.Ch = _FakeCh
    saved = (_FakeCh.__module__, _FakeCh.__qualname__)
    _FakeCh.__module__, _FakeCh.__qualname__ = "chumpy.ch", "Ch"
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = pkg, ch_mod
    try:
        data = pickle.dumps(d, protocol=protocol)
    finally:
        _FakeCh.__module__, _FakeCh.__qualname__ = saved
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    assert b"chumpy.ch" in data and b"scipy.sparse" in data
    path.write_bytes(data)


def expect_invalid(path, *words: str, code: str = "FLAME_INVALID") -> MVP4DError:
    with pytest.raises(MVP4DError) as e:
        load_flame(path)
    assert e.value.code == code, e.value
    for w in words:
        assert w in e.value.message, e.value.message
    return e.value


# ---- good files ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [1, 2])
def test_flame_pickle_with_chumpy_and_sparse_loads(tmp_path, protocol: int) -> None:
    a = flame_arrays()
    path = tmp_path / "generic_model.pkl"
    write_flame_pickle(path, a, protocol)
    assert "chumpy" not in sys.modules
    m = load_flame(path)
    assert "chumpy" not in sys.modules  # never imported
    assert m.v_template.dtype == np.float32 and np.allclose(m.v_template, a["v_template"])
    assert m.faces.dtype == np.int64 and np.array_equal(m.faces, a["f"])
    assert m.num_shape == 300 and m.num_expr == E
    assert np.allclose(m.shapedirs, a["shapedirs"][:, :, :300]) and np.allclose(m.exprdirs, a["shapedirs"][:, :, 300:])
    assert np.allclose(m.J_regressor, a["J_regressor"], atol=1e-7)
    assert np.array_equal(m.parents, [-1, 0, 1, 1, 1])
    assert np.allclose(m.lbs_weights, a["weights"]) and np.allclose(m.posedirs, a["posedirs"])
    assert m.model_id.startswith("flame:generic_model:") and len(m.model_id.split(":")[-1]) == 12
    assert not m.has_landmarks


def test_npz_with_flame_keys_and_separate_exprdirs(tmp_path) -> None:
    a = flame_arrays()
    a.pop("bs_style"), a.pop("bs_type")
    a["faces"] = a.pop("f")
    np.savez(tmp_path / "m.npz", **a)
    m = load_flame(tmp_path / "m.npz")
    assert m.num_shape == 300 and m.num_expr == 5 and np.array_equal(m.faces, a["faces"])
    b = dict(a, shapedirs=a["shapedirs"][:, :, :12], exprdirs=a["shapedirs"][:, :, 300:])
    np.savez(tmp_path / "split.npz", **b)
    m2 = load_flame(tmp_path / "split.npz")
    assert m2.num_shape == 12 and m2.num_expr == 5 and np.allclose(m2.exprdirs, a["shapedirs"][:, :, 300:])


def test_mediapipe_embedding_next_to_the_model(tmp_path) -> None:
    write_flame_pickle(tmp_path / "flame2023.pkl", flame_arrays())
    np.savez(
        tmp_path / "mediapipe_landmark_embedding.npz",
        lmk_face_idx=np.array([0, 5, 7]), lmk_b_coords=np.full((3, 3), 1 / 3), landmark_indices=np.array([1, 33, 263]),
    )
    m = load_flame(tmp_path / "flame2023.pkl")
    assert np.array_equal(m.landmark_ids, [1, 33, 263]) and m.landmark_bary.shape == (3, 3)
    np.savez(tmp_path / "bad_emb.npz", lmk_face_idx=np.array([0, 999]), lmk_b_coords=np.ones((2, 3)), landmark_indices=np.array([1, 2]))
    with pytest.raises(MVP4DError) as e:
        load_flame(tmp_path / "flame2023.pkl", landmark_embedding=tmp_path / "bad_emb.npz")
    assert e.value.code == "FLAME_INVALID" and "landmark_faces" in e.value.message


def test_save_flame_npz_round_trip(tmp_path) -> None:
    toy = build_toy_head()
    out = save_flame_npz(toy, tmp_path / "toy.npz")
    with np.load(out, allow_pickle=False) as z:  # plain arrays only
        assert "v_template" in z.files
    back = load_flame(out)
    assert back.model_id == toy.model_id == "toy:v1"
    assert back.expression_names == toy.expression_names and back.shape_names == toy.shape_names
    for k in ("v_template", "faces", "shapedirs", "exprdirs", "posedirs", "J_regressor", "parents", "lbs_weights",
              "landmark_faces", "landmark_bary", "landmark_ids", "head_vertex_mask"):
        a, b = getattr(toy, k), getattr(back, k)
        assert a.dtype == b.dtype and np.array_equal(a, b), k
    pkl = tmp_path / "generic_model.pkl"
    write_flame_pickle(pkl, flame_arrays())
    m = load_flame(pkl)
    m2 = load_flame(save_flame_npz(m, tmp_path / "converted"))
    assert m2.model_id == m.model_id and np.array_equal(m2.shapedirs, m.shapedirs)


def test_toy_source() -> None:
    m = load_flame("toy")
    assert m.model_id == "toy:v1" and m.num_vertices > 3000


# ---- refused files ---------------------------------------------------------------------------


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['MVP4D_TEST_MARKER']}",))


class _Custom:
    pass


@pytest.mark.parametrize("payload", ["system", "custom", "eval", "getattr"])
def test_disallowed_objects_are_refused_without_running(tmp_path, monkeypatch, payload: str) -> None:
    marker = tmp_path / "marker"
    monkeypatch.setenv("MVP4D_TEST_MARKER", str(marker))
    a = flame_arrays()
    if payload == "system":
        a["extra"] = _RunsCode()
    elif payload == "custom":
        a["extra"] = _Custom()
    elif payload == "eval":
        a["extra"] = _Reduce(eval, (f"open({str(marker)!r}, 'w')",))
    else:
        a["extra"] = _Reduce(getattr, ("text", "upper"))
    path = tmp_path / "evil.pkl"
    write_flame_pickle(path, a)
    err = expect_invalid(path, "disallowed object")
    assert not marker.exists()
    assert {"system": "system", "custom": "_Custom", "eval": "builtins.eval", "getattr": "builtins.getattr"}[payload] in err.message


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


class _FakeOp:
    """Pickles like a chumpy operation node (no value array under 'x')."""

    def __init__(self, a):
        self.a, self.b = a, a


def test_chumpy_expression_is_refused_clearly(tmp_path) -> None:
    a = flame_arrays()
    a["weights"] = _FakeOp(a["weights"])
    saved = (_FakeOp.__module__, _FakeOp.__qualname__)
    _FakeOp.__module__, _FakeOp.__qualname__ = "chumpy.ch_ops", "add"
    mods = {name: types.ModuleType(name) for name in ("chumpy", "chumpy.ch_ops")}
    mods["chumpy.ch_ops"].add = _FakeOp
    sys.modules.update(mods)
    try:
        data = pickle.dumps(a, protocol=2)
    finally:
        _FakeOp.__module__, _FakeOp.__qualname__ = saved
        for name in mods:
            del sys.modules[name]
    (tmp_path / "m.pkl").write_bytes(data)
    expect_invalid(tmp_path / "m.pkl", "weights", "chumpy expression")


def test_missing_key_is_named(tmp_path) -> None:
    for key in ("weights", "posedirs", "kintree_table", "f"):
        a = flame_arrays()
        del a[key]
        write_flame_pickle(tmp_path / "m.pkl", a)
        expect_invalid(tmp_path / "m.pkl", key)


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("posedirs", np.zeros((V, 3, 30)), ["posedirs has shape (30, 3, 30), expected (30, 3, 36)"]),
        ("weights", np.full((V, 4), 0.25), ["lbs_weights", "(30, 4)"]),
        ("J_regressor", np.ones((J, V + 1)) / (V + 1), ["J_regressor", "(5, 31)"]),
        ("v_template", np.zeros((V, 2)), ["v_template", "(30, 2)"]),
        ("f", np.full((F, 3), V, dtype=np.int64), ["faces", "0..29"]),
        ("kintree_table", np.array([[-1, 0, 3, 1, 1], [0, 1, 2, 3, 4]]), ["parents[2]", "tree"]),
        ("shapedirs", np.zeros((V, 3, 50)), ["shapedirs", "50 components"]),
        ("v_template", np.full((V, 3), np.nan), ["v_template", "non-finite"]),
    ],
)
def test_wrong_arrays_are_named(tmp_path, key: str, value: np.ndarray, words: list[str]) -> None:
    a = flame_arrays()
    a[key] = value
    write_flame_pickle(tmp_path / "m.pkl", a)
    expect_invalid(tmp_path / "m.pkl", *words)


def test_truncated_garbage_and_missing_files(tmp_path) -> None:
    write_flame_pickle(tmp_path / "m.pkl", flame_arrays())
    data = (tmp_path / "m.pkl").read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    expect_invalid(tmp_path / "cut.pkl", "cut.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x02garbage that is not a pickle")
    expect_invalid(tmp_path / "junk.pkl", "junk.pkl")
    (tmp_path / "text.bin").write_bytes(b"hello")
    expect_invalid(tmp_path / "text.bin", "neither")
    np.savez(tmp_path / "m.npz", v_template=np.zeros((V, 3)))
    npz = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(npz[: len(npz) // 2])
    expect_invalid(tmp_path / "cut.npz", "cut.npz")
    expect_invalid(tmp_path / "m.npz", "'f'")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    expect_invalid(tmp_path / "list.pkl", "dict")
    expect_invalid(tmp_path / "missing.pkl", "does not exist", code="BAD_INPUT")


def test_object_arrays_in_npz_are_refused(tmp_path) -> None:
    a = flame_arrays()
    a["f"] = a["f"].astype(object)
    a.pop("bs_style"), a.pop("bs_type")
    np.savez(tmp_path / "obj.npz", **a)
    expect_invalid(tmp_path / "obj.npz", "obj.npz")
