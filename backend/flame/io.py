"""Loading FLAME models: the toy head, official ``.pkl`` files (safely) and ``.npz`` conversions.

The official FLAME 2020/2023 files are Python-2 pickles holding numpy arrays, a
``scipy.sparse`` joint regressor and **chumpy** objects. Unpickling them normally needs chumpy
(unmaintained, broken on current numpy) and, worse, would let a tampered file run arbitrary
code or allocate gigabytes. :mod:`.safe_pickle` reads them with an allow-list of harmless,
size-checked callables and stubs for the chumpy and scipy.sparse classes; the stubs are turned
into dense numpy arrays here. Anything else stops the load with ``FLAME_INVALID``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MVP4DError
from .model import FlameModel
from .safe_pickle import AllocationRefused, Disallowed, restricted_load
from .safe_pickle import ChumpyStub as _ChumpyStub
from .safe_pickle import SparseStub as _SparseStub
from .safe_pickle import Stub as _Stub

#: file next to a FLAME model that holds FLAME's official MediaPipe landmark embedding
MEDIAPIPE_EMBEDDING_NAME = "mediapipe_landmark_embedding.npz"
#: shape components in FLAME 2020/2023 files (the remaining components are expressions)
FLAME_NUM_SHAPE = 300


def _invalid(message: str, hint: str | None = None) -> MVP4DError:
    return MVP4DError("FLAME_INVALID", message, hint)


def _sparse_to_dense(stub: _SparseStub, key: str) -> np.ndarray:
    st = stub._state if isinstance(stub._state, dict) else {}
    shape = st.get("_shape", st.get("shape"))
    try:
        rows, cols = (int(s) for s in shape)
        data = np.asarray(st["data"], dtype=np.float64)
        dense = np.zeros((rows, cols), dtype=np.float64)
        if stub.fmt == "coo":
            if "coords" in st:
                r, c = (np.asarray(a, dtype=np.int64) for a in st["coords"])
            else:
                r, c = np.asarray(st["row"], dtype=np.int64), np.asarray(st["col"], dtype=np.int64)
            np.add.at(dense, (r, c), data)
        else:
            idx = np.asarray(st["indices"], dtype=np.int64)
            ptr = np.asarray(st["indptr"], dtype=np.int64)
            major = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
            if stub.fmt == "csc":
                np.add.at(dense, (idx, major), data)
            else:
                np.add.at(dense, (major, idx), data)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise _invalid(f"FLAME file: {key} is a damaged sparse matrix ({type(e).__name__}: {e})") from e
    return dense


def _to_numpy(value: Any, key: str, depth: int = 0) -> Any:
    """Turn stubs (chumpy, scipy.sparse) into dense arrays; leave other values alone."""
    if depth > 8:
        raise _invalid(f"FLAME file: {key} nests too deeply to be an array")
    if isinstance(value, _SparseStub):
        return _sparse_to_dense(value, key)
    if isinstance(value, _ChumpyStub):
        st = value._state
        if isinstance(st, dict) and "x" in st:
            return np.asarray(_to_numpy(st["x"], key, depth + 1))
        raise _invalid(
            f"FLAME file: {key} is a chumpy expression that cannot be evaluated without chumpy",
            "Convert the file once with a machine that has chumpy, or use an unmodified FLAME file.",
        )
    return value


# ---------------------------------------------------------------------------------------------
# Mapping FLAME keys to a FlameModel
# ---------------------------------------------------------------------------------------------


def _get(d: dict[str, Any], *keys: str, required: bool = True) -> np.ndarray | None:
    for k in keys:
        if k in d:
            v = _to_numpy(d[k], k)
            if isinstance(v, _Stub) or not isinstance(v, (np.ndarray, list, tuple, int, float)):
                raise _invalid(f"FLAME file: {k} is a {type(v).__name__}, expected an array")
            try:
                return np.asarray(v)
            except Exception as e:  # ragged lists and the like
                raise _invalid(f"FLAME file: {k} is not an array ({e})") from e
    if required:
        raise _invalid(f"FLAME file: key {keys[0]!r} is missing")
    return None


def _as(a: np.ndarray, key: str, dtype: type, ndim: int) -> np.ndarray:
    if a.ndim != ndim:
        raise _invalid(f"FLAME file: {key} has shape {a.shape}, expected {ndim} dimensions")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise _invalid(f"FLAME file: {key} has dtype {a.dtype}, expected numbers")
    return np.ascontiguousarray(a, dtype=dtype)


def _parents_from_kintree(kt: np.ndarray) -> np.ndarray:
    """FLAME's ``kintree_table (2, J)``: row 0 parents (root = -1 or 2**32-1), row 1 joint ids."""
    if kt.ndim != 2 or kt.shape[0] != 2:
        raise _invalid(f"FLAME file: kintree_table has shape {kt.shape}, expected (2, J)")
    ids = [int(i) for i in kt[1]]
    id_to_index = {jid: i for i, jid in enumerate(ids)}
    parents = np.empty(len(ids), dtype=np.int64)
    for i, p in enumerate(kt[0]):
        p = int(p)
        if i == 0 or p < 0 or p >= 2**31:
            parents[i] = -1
        elif p in id_to_index:
            parents[i] = id_to_index[p]
        else:
            raise _invalid(f"FLAME file: kintree_table names parent {p}, which is not a joint")
    return parents


def _names(d: dict[str, Any], key: str) -> list[str] | None:
    if key not in d:
        return None
    return [str(s) for s in np.asarray(d[key]).reshape(-1)]


def model_from_dict(d: dict[str, Any], model_id: str) -> FlameModel:
    """Build and validate a FlameModel from FLAME keys (pkl) or this package's npz keys."""
    v = _as(_get(d, "v_template"), "v_template", np.float32, 2)
    faces = _as(_get(d, "f", "faces"), "f", np.int64, 2)
    sd = _as(_get(d, "shapedirs"), "shapedirs", np.float32, 3)
    ed = _get(d, "exprdirs", "expressiondirs", "expr_dirs", required=False)
    if ed is not None:
        ed = _as(ed, "exprdirs", np.float32, 3)
    else:
        K = sd.shape[2]
        n_shape = int(np.asarray(d["num_shape"]).reshape(())) if "num_shape" in d else None
        if n_shape is None:
            if K <= FLAME_NUM_SHAPE:
                raise _invalid(
                    f"FLAME file: shapedirs has {K} components and there is no exprdirs key: cannot tell "
                    f"shape from expression (expected {FLAME_NUM_SHAPE} shape + expression components)"
                )
            n_shape = FLAME_NUM_SHAPE
        if not 0 < n_shape < K:
            raise _invalid(f"FLAME file: num_shape is {n_shape} but shapedirs has {K} components")
        sd, ed = sd[:, :, :n_shape].copy(), sd[:, :, n_shape:].copy()
    pd = _as(_get(d, "posedirs"), "posedirs", np.float32, 3)
    jr = _as(_get(d, "J_regressor"), "J_regressor", np.float32, 2)
    if "parents" in d:
        parents = _as(_get(d, "parents"), "parents", np.int64, 1)
    else:
        parents = _parents_from_kintree(_as(_get(d, "kintree_table"), "kintree_table", np.int64, 2))
    w = _as(_get(d, "weights", "lbs_weights"), "weights", np.float32, 2)
    opt: dict[str, Any] = {}
    for key, dtype, ndim in (("landmark_faces", np.int64, 1), ("landmark_bary", np.float32, 2),
                             ("landmark_ids", np.int64, 1), ("head_vertex_mask", np.bool_, 1)):
        a = _get(d, key, required=False)
        if a is not None:
            opt[key] = _as(a, key, dtype, ndim)
    model = FlameModel(
        v_template=v, faces=faces, shapedirs=sd, exprdirs=ed, posedirs=pd, J_regressor=jr,
        parents=parents, lbs_weights=w, expression_names=_names(d, "expression_names"),
        shape_names=_names(d, "shape_names"), model_id=model_id, **opt,
    )
    return model.validate()


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _read_pickle(path: Path, data: bytes) -> dict[str, Any]:
    try:
        obj = restricted_load(data)
    except Disallowed as e:
        raise _invalid(
            f"FLAME file holds a disallowed object: {e.qualname}",
            "Use an unmodified FLAME .pkl; this file contains code or classes a FLAME model never holds.",
        ) from None
    except AllocationRefused as e:
        need = "an allocation of unbounded size" if e.nbytes < 0 else f"{e.nbytes:,} bytes"
        raise _invalid(
            f"FLAME file {path.name} asks for {e.what} ({need}), which with what it allocated before exceeds "
            f"what its {len(data):,} bytes can justify",
            "Use an unmodified FLAME .pkl; this file is damaged or built to exhaust memory.",
        ) from None
    except MVP4DError:
        raise
    except Exception as e:  # truncated, garbage, wrong protocol, broken array state
        raise _invalid(f"FLAME file {path.name} is not a readable FLAME pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise _invalid(f"FLAME file {path.name} holds a {type(obj).__name__}, expected a dict of arrays")
    return {str(k): v for k, v in obj.items()}


def _read_npz(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: np.asarray(npz[k]) for k in npz.files}
    except Exception as e:
        raise _invalid(f"FLAME file {path.name} is not a readable .npz ({type(e).__name__}: {e})") from e


def _attach_embedding(model: FlameModel, path: Path) -> FlameModel:
    """Attach FLAME's MediaPipe embedding (``lmk_face_idx``, ``lmk_b_coords``, ``landmark_indices``)."""
    d = _read_npz(path)
    try:
        faces = _as(_get(d, "lmk_face_idx", "landmark_faces"), "lmk_face_idx", np.int64, 1)
        bary = _as(_get(d, "lmk_b_coords", "landmark_bary"), "lmk_b_coords", np.float32, 2)
        ids = _as(_get(d, "landmark_indices", "landmark_ids"), "landmark_indices", np.int64, 1)
    except MVP4DError as e:
        raise _invalid(f"landmark embedding {path.name}: {e.message.removeprefix('FLAME file: ')}") from e
    model.landmark_faces, model.landmark_bary, model.landmark_ids = faces, bary, ids
    try:
        return model.validate()
    except MVP4DError as e:
        raise _invalid(f"landmark embedding {path.name}: {e.message.removeprefix('FLAME file: ')}") from e


def load_flame(source: str | os.PathLike, landmark_embedding: str | os.PathLike | None = None) -> FlameModel:
    """Load ``"toy"`` (procedural head), a FLAME ``.pkl`` or a ``.npz`` with the same keys.

    The MediaPipe landmark embedding comes from the file itself (npz written by
    :func:`save_flame_npz`), from ``landmark_embedding``, or from FLAME's
    ``mediapipe_landmark_embedding.npz`` next to the model. Errors: a missing file is
    ``BAD_INPUT``; anything unreadable, disallowed, missing or misshapen is ``FLAME_INVALID``
    naming the key.
    """
    if str(source) == "toy":
        from .toy import build_toy_head

        model = build_toy_head()
        if landmark_embedding is not None:
            model = _attach_embedding(model.copy(), Path(landmark_embedding))
        return model
    path = Path(source).expanduser()
    if not path.is_file():
        raise MVP4DError(
            "BAD_INPUT",
            f"FLAME model {path} does not exist",
            "Point to your FLAME .pkl/.npz (e.g. flame2023.pkl) or use 'toy'.",
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MVP4DError("BAD_INPUT", f"cannot read FLAME model {path} ({e.strerror})") from e
    digest = hashlib.sha256(data).hexdigest()[:12]
    if data[:2] == b"PK" or path.suffix.lower() == ".npz":
        d = _read_npz(path)
    elif data[:1] == b"\x80" or path.suffix.lower() in (".pkl", ".pickle"):
        d = _read_pickle(path, data)
    else:
        raise _invalid(f"FLAME file {path.name} is neither a pickle (.pkl) nor an .npz")
    stored_id = d.pop("model_id", None)
    model_id = str(np.asarray(stored_id).reshape(())) if stored_id is not None else f"flame:{path.stem}:{digest}"
    model = model_from_dict(d, model_id)
    model.meta["source"] = str(path)
    if model.num_joints == 5:  # eye_pose drives joints 3 then 4 as stored; record which is at +x (left)
        jx = model.joints()[3:, 0]
        model.meta["eye_joint_order"] = "left,right" if jx[0] >= jx[1] else "right,left"
    emb = Path(landmark_embedding) if landmark_embedding is not None else path.with_name(MEDIAPIPE_EMBEDDING_NAME)
    if landmark_embedding is not None and not emb.is_file():
        raise MVP4DError("BAD_INPUT", f"landmark embedding {emb} does not exist")
    if emb.is_file() and (landmark_embedding is not None or not model.has_landmarks):
        model = _attach_embedding(model, emb)
    return model


def save_flame_npz(model: FlameModel, path: str | os.PathLike) -> Path:
    """Write ``model`` as a plain ``.npz`` (no pickles) that :func:`load_flame` reads back equal.

    Lets users convert a FLAME ``.pkl`` once; the npz keeps the model id, the landmark
    embedding, the head mask and the component names.
    """
    model.validate()
    out: dict[str, np.ndarray] = {
        "v_template": model.v_template, "faces": model.faces, "shapedirs": model.shapedirs,
        "exprdirs": model.exprdirs, "posedirs": model.posedirs, "J_regressor": model.J_regressor,
        "parents": model.parents, "lbs_weights": model.lbs_weights, "model_id": np.array(model.model_id),
    }
    for key in ("landmark_faces", "landmark_bary", "landmark_ids", "head_vertex_mask"):
        if getattr(model, key) is not None:
            out[key] = getattr(model, key)
    for key in ("expression_names", "shape_names"):
        if getattr(model, key) is not None:
            out[key] = np.array(getattr(model, key), dtype=str)
    p = Path(path)
    if p.suffix != ".npz":
        p = p.with_suffix(p.suffix + ".npz") if p.suffix else p.with_suffix(".npz")
    with open(p, "wb") as fh:
        np.savez(fh, **out)
    return p
