"""The FLAME head model as plain numpy arrays, and the checks every loaded model must pass.

A :class:`FlameModel` is the one in-memory form of every head model the backend uses: the real
FLAME 2020/2023/2023 Open files (read by :mod:`backend.flame.io`), converted ``.npz`` files and the
procedural toy head (:mod:`backend.flame.toy`). Keeping it numpy-only (no torch) lets the loader,
the converter and the tests work without building tensors; :class:`backend.flame.lbs.Flame` turns
it into torch buffers.

Layout (V vertices, F faces, S shape and E expression components, J joints, L landmarks)::

    v_template   (V, 3)        float32  metres, +y up, face looking along +z
    faces        (F, 3)        int64    counter-clockwise seen from outside
    shapedirs    (V, 3, S)     float32  identity blendshapes (per unit coefficient)
    exprdirs     (V, 3, E)     float32  expression blendshapes
    posedirs     (V, 3, 9(J-1)) float32 pose correctives, fed with (R_j - I) of joints 1..J-1
    J_regressor  (J, V)        float32  dense; joints = J_regressor @ vertices
    parents      (J,)          int64    parents[0] == -1, parents[j] < j
    lbs_weights  (V, J)        float32  rows sum to 1
    landmark_faces (L,) int64, landmark_bary (L, 3) float32, landmark_ids (L,) int64  (optional)
    head_vertex_mask (V,) bool (optional)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from ..errors import MVP4DError

#: number of MediaPipe FaceMesh landmarks with ``refine_landmarks=True`` (468 mesh + 10 iris)
NUM_MEDIAPIPE_LANDMARKS = 478

#: joint names in FLAME order (the order of ``eye_pose`` is left then right)
JOINT_NAMES = ("root", "neck", "jaw", "eye_left", "eye_right")


def _fail(message: str) -> MVP4DError:
    return MVP4DError("FLAME_INVALID", f"FLAME file: {message}")


@dataclass
class FlameModel:
    """A FLAME-layout head model (see the module docstring for shapes and units)."""

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    exprdirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    parents: np.ndarray
    lbs_weights: np.ndarray
    landmark_faces: np.ndarray | None = None
    landmark_bary: np.ndarray | None = None
    landmark_ids: np.ndarray | None = None
    head_vertex_mask: np.ndarray | None = None
    expression_names: list[str] | None = None
    shape_names: list[str] | None = None
    model_id: str = "unknown"
    #: free-form notes kept with the model (e.g. where it was loaded from); not validated
    meta: dict[str, str] = field(default_factory=dict)

    # ---- sizes -------------------------------------------------------------------------------

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def num_shape(self) -> int:
        return int(self.shapedirs.shape[2])

    @property
    def num_expr(self) -> int:
        return int(self.exprdirs.shape[2])

    @property
    def num_joints(self) -> int:
        return int(self.parents.shape[0])

    @property
    def num_landmarks(self) -> int:
        return 0 if self.landmark_ids is None else int(self.landmark_ids.shape[0])

    @property
    def has_landmarks(self) -> bool:
        return self.landmark_ids is not None

    # ---- helpers -----------------------------------------------------------------------------

    def joints(self, vertices: np.ndarray | None = None) -> np.ndarray:
        """Joint positions ``(J, 3)`` regressed from ``vertices`` (default: the template)."""
        v = self.v_template if vertices is None else vertices
        return (self.J_regressor @ v).astype(np.float32)

    def head_mask(self) -> np.ndarray:
        """Vertices of the head proper (for crop boxes): the stored mask, else a fallback.

        The fallback drops vertices skinned mostly to the root joint (the lower neck in FLAME and
        the toy head); if that would drop more than half the mesh it keeps every vertex.
        """
        if self.head_vertex_mask is not None:
            return self.head_vertex_mask.copy()
        mask = self.lbs_weights[:, 0] < 0.5
        if mask.sum() < 0.5 * self.num_vertices:
            mask = np.ones(self.num_vertices, dtype=bool)
        return mask

    def copy(self) -> "FlameModel":
        """A deep copy whose arrays are writable (the cached toy head's arrays are read-only)."""
        kw = {}
        for f in fields(self):
            val = getattr(self, f.name)
            if isinstance(val, np.ndarray):
                val = val.copy()
            elif isinstance(val, (list, dict)):
                val = type(val)(val)
            kw[f.name] = val
        return FlameModel(**kw)

    def set_read_only(self) -> "FlameModel":
        """Mark every array read-only (shared cached models must not be edited in place)."""
        for f in fields(self):
            val = getattr(self, f.name)
            if isinstance(val, np.ndarray):
                val.flags.writeable = False
        return self

    # ---- validation --------------------------------------------------------------------------

    def validate(self) -> "FlameModel":
        """Check shapes, dtypes, index ranges, finiteness and the joint tree.

        Raises ``FLAME_INVALID`` naming the key and the actual vs expected shape, so a user with
        a damaged or foreign file learns which array is wrong. Returns ``self`` for chaining.
        """
        v = _array(self.v_template, "v_template", np.floating)
        if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 3:
            raise _fail(f"v_template has shape {v.shape}, expected (V, 3) with V >= 3")
        V = v.shape[0]
        f = _array(self.faces, "faces", np.integer)
        if f.ndim != 2 or f.shape[1] != 3 or f.shape[0] < 1:
            raise _fail(f"faces has shape {f.shape}, expected (F, 3)")
        if f.min() < 0 or f.max() >= V:
            raise _fail(f"faces index vertices {int(f.min())}..{int(f.max())}, expected 0..{V - 1}")
        p = _array(self.parents, "parents", np.integer)
        if p.ndim != 1 or p.shape[0] < 1:
            raise _fail(f"parents has shape {p.shape}, expected (J,)")
        J = p.shape[0]
        if p[0] != -1:
            raise _fail(f"parents[0] is {int(p[0])}, expected -1 (the root joint)")
        for j in range(1, J):
            if not 0 <= p[j] < j:
                raise _fail(
                    f"parents[{j}] is {int(p[j])}: the joints do not form a tree "
                    f"(each parent must be an earlier joint, 0..{j - 1})"
                )
        _shape(self.shapedirs, "shapedirs", (V, 3, None), np.floating)
        _shape(self.exprdirs, "exprdirs", (V, 3, None), np.floating)
        _shape(self.posedirs, "posedirs", (V, 3, 9 * (J - 1)), np.floating)
        _shape(self.J_regressor, "J_regressor", (J, V), np.floating)
        w = _shape(self.lbs_weights, "lbs_weights", (V, J), np.floating)
        if w.min() < -1e-4:
            raise _fail(f"lbs_weights has a negative weight ({float(w.min()):.3g})")
        sums = w.sum(axis=1)
        bad = np.abs(sums - 1.0) > 1e-2
        if bad.any():
            i = int(np.argmax(bad))
            raise _fail(f"lbs_weights row {i} sums to {float(sums[i]):.4f}, expected 1")
        lm = [self.landmark_faces, self.landmark_bary, self.landmark_ids]
        if any(a is not None for a in lm):
            if not all(a is not None for a in lm):
                raise _fail("landmark_faces, landmark_bary and landmark_ids must be given together")
            lf = _array(self.landmark_faces, "landmark_faces", np.integer)
            if lf.ndim != 1:
                raise _fail(f"landmark_faces has shape {lf.shape}, expected (L,)")
            L = lf.shape[0]
            _shape(self.landmark_bary, "landmark_bary", (L, 3), np.floating)
            ids = _shape(self.landmark_ids, "landmark_ids", (L,), np.integer)
            if L and (lf.min() < 0 or lf.max() >= f.shape[0]):
                raise _fail(f"landmark_faces index faces {int(lf.min())}..{int(lf.max())}, expected 0..{f.shape[0] - 1}")
            if L and (ids.min() < 0 or ids.max() >= NUM_MEDIAPIPE_LANDMARKS):
                raise _fail(f"landmark_ids must lie in 0..{NUM_MEDIAPIPE_LANDMARKS - 1} (MediaPipe FaceMesh)")
        if self.head_vertex_mask is not None:
            m = np.asarray(self.head_vertex_mask)
            if m.dtype != np.bool_ or m.shape != (V,):
                raise _fail(f"head_vertex_mask has shape {m.shape} and dtype {m.dtype}, expected ({V},) bool")
        for key, names, n in (
            ("expression_names", self.expression_names, self.exprdirs.shape[2]),
            ("shape_names", self.shape_names, self.shapedirs.shape[2]),
        ):
            if names is not None and len(names) != n:
                raise _fail(f"{key} has {len(names)} names for {n} components")
        return self


def _array(a: object, key: str, kind: type) -> np.ndarray:
    """The value as an ndarray of the right kind, finite; ``FLAME_INVALID`` naming ``key``."""
    if not isinstance(a, np.ndarray):
        raise _fail(f"{key} is {type(a).__name__}, expected a numpy array")
    if not np.issubdtype(a.dtype, kind):
        raise _fail(f"{key} has dtype {a.dtype}, expected {'float' if kind is np.floating else 'integer'}")
    if kind is np.floating and not np.isfinite(a).all():
        raise _fail(f"{key} holds non-finite values (NaN or inf)")
    return a


def _shape(a: object, key: str, expected: tuple[int | None, ...], kind: type) -> np.ndarray:
    arr = _array(a, key, kind)
    ok = arr.ndim == len(expected) and all(e is None or e == s for s, e in zip(arr.shape, expected))
    if not ok:
        exp = "(" + ", ".join("K" if e is None else str(e) for e in expected) + ("," if len(expected) == 1 else "") + ")"
        raise _fail(f"{key} has shape {tuple(arr.shape)}, expected {exp}")
    return arr
