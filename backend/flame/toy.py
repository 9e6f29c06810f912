"""The toy head: a procedural, deterministic stand-in for FLAME in the same layout.

The real FLAME model needs a registration and has a non-commercial licence, so tests, demos and
CPU smoke runs use this head instead (``load_flame("toy")``). It has FLAME's joint layout
``[root, neck, jaw, eye_left, eye_right]``, identity and expression blendshapes with names, pose
correctives (all zero, with the right shape), a head mask and an embedding of MediaPipe FaceMesh
landmarks, so tracking, conditioning and animation code paths run unchanged.

Geometry lives in :mod:`backend.flame.toy_mesh` (topology) and :mod:`backend.flame.toy_shape`
(vertex function); this module builds the rig from them in metres. Joint rest positions (metres,
approximate): root (0, -0.010, -0.010), neck (0, -0.045, -0.020), jaw (0, -0.015, 0.005), eyes
(+-0.0315, 0.0105, 0.0685), radius 0.012.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .model import FlameModel
from .toy_mesh import EYE_CENTRE, JAW_AXIS, SHAPE_NAMES, topology
from .toy_shape import evaluate

TOY_MODEL_ID = "toy:v1"
CM = 0.01

EXPRESSION_NAMES = (
    "jaw_open", "smile", "blink_left", "blink_right", "brow_raise", "brow_lower", "frown",
    "mouth_pucker", "cheek_puff", "mouth_wide", "lip_press", "eyes_wide",
)
JAW_OPEN_ANGLE = 0.25  # radians of jaw rotation at jaw_open = 1

# MediaPipe FaceMesh landmarks embedded on the toy surface. Kinds:
#   ("front", x, y)   front-most skin point at (x, y) metres, projected along -z;
#   ("side", y, z)    outermost skin point at (y, z) on the side of the landmark's sign of x;
#   ("eye", eye, rim, x)  rim vertex of the eye slit ("upper"/"lower"/"outer"/"inner") nearest x;
#   ("mouth", rim, x) rim vertex of the mouth slit ("upper"/"lower"/"corner") nearest x;
#   ("iris", eye)     centre of the cornea.
# "left" is the subject's left (+x); MediaPipe's "right eye" 33/133 is at -x. Front positions
# follow the proportions of MediaPipe's canonical face model, moved into the toy's frame.
LANDMARKS: tuple[tuple[int, str, tuple], ...] = (
    (33, "right eye outer corner", ("eye", "right", "outer", -0.0445)),
    (133, "right eye inner corner", ("eye", "right", "inner", -0.0186)),
    (159, "right upper eyelid centre", ("eye", "right", "upper", -0.0318)),
    (145, "right lower eyelid centre", ("eye", "right", "lower", -0.0318)),
    (160, "right upper eyelid, outer", ("eye", "right", "upper", -0.0367)),
    (158, "right upper eyelid, inner", ("eye", "right", "upper", -0.0272)),
    (144, "right lower eyelid, outer", ("eye", "right", "lower", -0.0367)),
    (153, "right lower eyelid, inner", ("eye", "right", "lower", -0.0272)),
    (263, "left eye outer corner", ("eye", "left", "outer", 0.0445)),
    (362, "left eye inner corner", ("eye", "left", "inner", 0.0186)),
    (386, "left upper eyelid centre", ("eye", "left", "upper", 0.0318)),
    (374, "left lower eyelid centre", ("eye", "left", "lower", 0.0318)),
    (387, "left upper eyelid, outer", ("eye", "left", "upper", 0.0367)),
    (385, "left upper eyelid, inner", ("eye", "left", "upper", 0.0272)),
    (373, "left lower eyelid, outer", ("eye", "left", "lower", 0.0367)),
    (380, "left lower eyelid, inner", ("eye", "left", "lower", 0.0272)),
    (468, "right iris centre", ("iris", "right")),
    (473, "left iris centre", ("iris", "left")),
    (70, "right brow, outer end", ("front", -0.0572, 0.0265)),
    (63, "right brow, outer third", ("front", -0.0499, 0.0320)),
    (105, "right brow, middle", ("front", -0.0399, 0.0351)),
    (66, "right brow, inner third", ("front", -0.0276, 0.0350)),
    (107, "right brow, inner end", ("front", -0.0140, 0.0341)),
    (46, "right brow lower edge, outer", ("front", -0.0525, 0.0228)),
    (52, "right brow lower edge, middle", ("front", -0.0373, 0.0291)),
    (300, "left brow, outer end", ("front", 0.0572, 0.0265)),
    (293, "left brow, outer third", ("front", 0.0499, 0.0320)),
    (334, "left brow, middle", ("front", 0.0399, 0.0351)),
    (296, "left brow, inner third", ("front", 0.0276, 0.0350)),
    (336, "left brow, inner end", ("front", 0.0140, 0.0341)),
    (276, "left brow lower edge, outer", ("front", 0.0525, 0.0228)),
    (282, "left brow lower edge, middle", ("front", 0.0373, 0.0291)),
    (10, "forehead top (hairline)", ("front", 0.0, 0.0666)),
    (151, "forehead middle", ("front", 0.0, 0.0495)),
    (9, "glabella", ("front", 0.0, 0.0329)),
    (168, "nasion (between the eyes)", ("front", 0.0, 0.0167)),
    (6, "nose bridge, upper", ("front", 0.0, 0.0087)),
    (197, "nose bridge, middle", ("front", 0.0, 0.0013)),
    (195, "nose bridge, lower", ("front", 0.0, -0.0054)),
    (5, "nose dorsum above the tip", ("front", 0.0, -0.0123)),
    (4, "nose tip, upper (most protruding)", ("front", 0.0, -0.0206)),
    (1, "nose tip", ("front", 0.0, -0.0273)),
    (94, "columella", ("front", 0.0, -0.0332)),
    (2, "subnasale (nose base)", ("front", 0.0, -0.0369)),
    (98, "right nose wing (ala)", ("front", -0.0141, -0.0331)),
    (327, "left nose wing (ala)", ("front", 0.0141, -0.0331)),
    (61, "right mouth corner", ("mouth", "corner", -0.0245)),
    (291, "left mouth corner", ("mouth", "corner", 0.0245)),
    (0, "upper lip, outer centre", ("front", 0.0, -0.0501)),
    (37, "upper lip outer, right of centre", ("front", -0.0071, -0.0493)),
    (267, "upper lip outer, left of centre", ("front", 0.0071, -0.0493)),
    (39, "upper lip outer, right middle", ("front", -0.0143, -0.0510)),
    (269, "upper lip outer, left middle", ("front", 0.0143, -0.0510)),
    (40, "upper lip outer, right lateral", ("front", -0.0191, -0.0540)),
    (270, "upper lip outer, left lateral", ("front", 0.0191, -0.0540)),
    (17, "lower lip, outer centre", ("front", 0.0, -0.0697)),
    (84, "lower lip outer, right of centre", ("front", -0.0070, -0.0689)),
    (314, "lower lip outer, left of centre", ("front", 0.0070, -0.0689)),
    (181, "lower lip outer, right middle", ("front", -0.0133, -0.0671)),
    (405, "lower lip outer, left middle", ("front", 0.0133, -0.0671)),
    (91, "lower lip outer, right lateral", ("front", -0.0184, -0.0643)),
    (321, "lower lip outer, left lateral", ("front", 0.0184, -0.0643)),
    (13, "upper lip, inner centre", ("mouth", "upper", 0.0)),
    (14, "lower lip, inner centre", ("mouth", "lower", 0.0)),
    (82, "upper lip inner, right of centre", ("mouth", "upper", -0.0053)),
    (312, "upper lip inner, left of centre", ("mouth", "upper", 0.0053)),
    (87, "lower lip inner, right of centre", ("mouth", "lower", -0.0058)),
    (317, "lower lip inner, left of centre", ("mouth", "lower", 0.0058)),
    (78, "right inner mouth corner", ("mouth", "upper", -0.0215)),
    (308, "left inner mouth corner", ("mouth", "upper", 0.0215)),
    (199, "chin, upper", ("front", 0.0, -0.0954)),
    (175, "chin, middle", ("front", 0.0, -0.1037)),
    (152, "chin bottom (menton)", ("front", 0.0, -0.1100)),
    (148, "chin, right", ("front", -0.0129, -0.1090)),
    (377, "chin, left", ("front", 0.0129, -0.1090)),
    (149, "jaw line, right front", ("front", -0.0321, -0.1013)),
    (378, "jaw line, left front", ("front", 0.0321, -0.1013)),
    (136, "jaw line, right", ("front", -0.0509, -0.0878)),
    (365, "jaw line, left", ("front", 0.0509, -0.0878)),
    (205, "right cheek", ("front", -0.0383, -0.0314)),
    (425, "left cheek", ("front", 0.0383, -0.0314)),
    (50, "right cheek, upper", ("front", -0.0477, -0.0230)),
    (280, "left cheek, upper", ("front", 0.0477, -0.0230)),
    (36, "right cheek beside the nose", ("front", -0.0284, -0.0232)),
    (266, "left cheek beside the nose", ("front", 0.0284, -0.0232)),
    (117, "right cheekbone", ("front", -0.0526, -0.0065)),
    (346, "left cheekbone", ("front", 0.0526, -0.0065)),
    (234, "right side of the face at the ear", ("side", -0.0093, 0.0177)),
    (454, "left side of the face at the ear", ("side", -0.0093, 0.0177)),
)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _jaw_weights(X: np.ndarray) -> np.ndarray:
    """Share of each vertex that follows the jaw (cm coordinates): a wedge below the mouth line."""
    topo = topology()
    ang = np.degrees(np.arctan2(X[:, 1] - JAW_AXIS[1], X[:, 2] - JAW_AXIS[2]))
    m = topo.mouth_slit
    c = X[m.upper[len(m.upper) // 2]]
    a_m = np.degrees(np.arctan2(c[1] - JAW_AXIS[1], c[2] - JAW_AXIS[2]))
    band = 2.5 + 9.0 * _smoothstep(2.6, 5.5, np.abs(X[:, 0]))
    w = _smoothstep(a_m + band, a_m - band, ang)
    w *= _smoothstep(-114.0, -100.0, ang) * (1.0 - _smoothstep(-10.5, -12.5, X[:, 1]))
    w[topo.part >= 3] = 0.0
    w[topo.part == 1] = 0.0
    w[m.upper], w[m.lower] = 0.0, 1.0
    rings, centre = topo.pockets["mouth"]
    side = m.loop_side()
    w[rings] = np.where(side > 0, 0.0, np.where(side < 0, 1.0, 0.5))[None, :]
    w[centre] = 0.5
    return w


def _skinning(X: np.ndarray, w_jaw: np.ndarray) -> np.ndarray:
    topo = topology()
    W = np.zeros((len(X), 5))
    w_root = (1.0 - _smoothstep(-16.0, -10.5, X[:, 1])) * (topo.part == 0)
    w_root = np.minimum(w_root, 1.0 - w_jaw)
    W[:, 0], W[:, 2] = w_root, w_jaw
    W[:, 1] = 1.0 - w_root - w_jaw
    for j, ids in zip((3, 4), topo.eyeballs):
        W[ids] = 0.0
        W[ids, j] = 1.0
    return W


def _regressor(X: np.ndarray) -> np.ndarray:
    """Joints as fixed combinations of vertices, so they follow identity changes like FLAME's."""
    topo = topology()
    R = np.zeros((5, len(X)))
    cand = np.flatnonzero((topo.part == 0) & (X[:, 0] > 0.3))
    targets = {
        0: ((0.0, -1.0, -1.0), [(5.0, 6.0, 2.0), (5.0, 2.0, -8.0), (5.0, -8.0, -1.0)]),
        1: ((0.0, -4.5, -2.0), [(5.0, 0.0, -2.0), (4.5, -12.0, 2.0), (4.5, -12.0, -6.0)]),
        2: (tuple(JAW_AXIS), [(6.0, 1.0, 1.0), (6.0, -4.0, 3.0), (6.0, -4.0, -2.0)]),
    }
    for j, (target, anchors) in targets.items():
        pairs, mids = [], []
        for a in anchors:
            v = cand[np.argmin(((X[cand] - a) ** 2).sum(1))]
            mirror = X[v] * [-1, 1, 1]
            u = int(np.argmin(((X - mirror) ** 2).sum(1)))
            pairs.append((v, u))
            mids.append(0.5 * (X[v] + X[u])[1:])
        (y1, z1), (y2, z2), (y3, z3) = mids
        ty, tz = target[1], target[2]
        det = (y2 - y1) * (z3 - z1) - (y3 - y1) * (z2 - z1)
        l2 = ((ty - y1) * (z3 - z1) - (y3 - y1) * (tz - z1)) / det
        l3 = ((y2 - y1) * (tz - z1) - (ty - y1) * (z2 - z1)) / det
        lam = (1.0 - l2 - l3, l2, l3)
        assert min(lam) > 0.0, f"joint {j}: anchors do not surround the target"
        for (v, u), w in zip(pairs, lam):
            R[j, v] += 0.5 * w
            R[j, u] += 0.5 * w
    n = topo.eye_segments
    equator = topo.eye_rings // 2
    for j, ids in zip((3, 4), topo.eyeballs):
        R[j, ids[equator * n:(equator + 1) * n]] = 1.0 / n
    return R


def _expressions(X: np.ndarray, w_jaw: np.ndarray, jaw: np.ndarray) -> np.ndarray:
    """Expression blendshapes (cm, V x 3 x E) at the mean identity."""
    topo = topology()
    x, y, z = X.T
    ax, sx = np.abs(x), np.sign(x)
    face = ((topo.part == 0) | (topo.part == 2)) * _smoothstep(3.0, 6.0, z)
    rest = evaluate()
    D = np.zeros((len(X), 3, len(EXPRESSION_NAMES)))

    def put(name: str, d: np.ndarray, mask: np.ndarray = face) -> None:
        D[:, :, EXPRESSION_NAMES.index(name)] = d * np.asarray(mask)[:, None]

    a = JAW_OPEN_ANGLE * w_jaw
    c, s = np.cos(a), np.sin(a)
    py, pz = y - jaw[1], z - jaw[2]
    put("jaw_open", np.stack([0 * x, c * py - s * pz - py, s * py + c * pz - pz], -1), np.ones(len(X)))
    g = _gauss(ax, y, 2.5, -5.9, 1.1, 0.9)[:, None]
    ch = _gauss(ax, y, 3.6, -3.5, 1.5, 1.3)[:, None]
    lid = _gauss(ax, y, 3.15, 0.4, 1.0, 0.5)[:, None]
    put("smile", g * np.stack([0.3 * sx, 0.55 + 0 * x, -0.3 + 0 * x], -1)
        + ch * np.stack([0.1 * sx, 0.3 + 0 * x, 0.2 + 0 * x], -1) + lid * [0.0, 0.12, 0.05])
    put("blink_left", evaluate(blink=(1.0, 0.0)) - rest, np.ones(len(X)))
    put("blink_right", evaluate(blink=(0.0, 1.0)) - rest, np.ones(len(X)))
    put("eyes_wide", evaluate(blink=(-0.35, -0.35)) - rest, np.ones(len(X)))
    up = _smoothstep(0.9, 2.8, y) * (1.0 - 0.7 * _smoothstep(4.0, 9.0, y)) * (1.0 - _smoothstep(5.0, 7.0, ax))
    put("brow_raise", np.stack([0 * x, 0.55 * up, 0 * x], -1))
    b = _gauss(ax, y, 1.8, 3.0, 1.8, 0.9)[:, None]
    put("brow_lower", b * np.stack([-0.2 * sx, -0.35 + 0 * x, 0.05 + 0 * x], -1))
    put("frown", _gauss(ax, y, 2.5, -6.3, 1.0, 1.0)[:, None] * [0.0, -0.45, -0.05]
        + _gauss(x, y, 0.0, -6.8, 1.5, 0.7)[:, None] * [0.0, 0.0, 0.15])
    lips = _gauss(x, y, 0.0, -5.9, 2.2, 1.2)
    put("mouth_pucker", np.stack([-0.3 * x * lips, 0 * x, 0.55 * lips], -1))
    put("cheek_puff", _gauss(ax, y, 3.8, -4.5, 1.6, 1.6)[:, None] * np.stack([0.45 * sx, 0 * x, 0.35 + 0 * x], -1))
    put("mouth_wide", _gauss(ax, y, 2.4, -5.9, 1.2, 1.0)[:, None] * np.stack([0.5 * sx, 0 * x, -0.2 + 0 * x], -1))
    press = _gauss(x, y, 0.0, -5.9, 2.2, 0.8)
    y_slit = X[topo.mouth_slit.upper, 1].mean()
    put("lip_press", np.stack([0 * x, -0.3 * (y - y_slit) * press, -0.25 * press], -1))
    for ids in topo.eyeballs:  # eyeballs only move through the eye joints
        D[ids] = 0.0
    return D


def _landmarks(X: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face index and barycentric coordinates of each entry of :data:`LANDMARKS`."""
    topo = topology()
    skin_faces = np.flatnonzero(np.all(topo.part[faces] == 0, axis=1))
    incident: dict[int, int] = {}
    for fi in skin_faces[::-1]:
        for v in faces[fi]:
            incident[int(v)] = int(fi)
    eyes = {"left": topo.eye_slits[0], "right": topo.eye_slits[1]}
    out_f, out_b = [], []
    for mp_id, name, spec in LANDMARKS:
        kind = spec[0]
        if kind in ("front", "side"):
            axis = 2 if kind == "front" else 0
            sign = 1.0 if kind == "front" else (1.0 if mp_id == 454 else -1.0)
            q = np.array(spec[1:]) / CM
            f, bary = _project(X, faces[skin_faces], q, axis, sign)
            out_f.append(int(skin_faces[f])), out_b.append(bary)
            continue
        if kind == "iris":
            v = topo.eyeballs[0 if spec[1] == "left" else 1][-2]
            f = int(np.flatnonzero(np.any(faces == v, axis=1))[0])
        else:
            slit = eyes[spec[1]] if kind == "eye" else topo.mouth_slit
            rim = spec[2] if kind == "eye" else spec[1]
            tx = spec[-1] / CM
            if rim in ("outer", "inner", "corner"):
                cands = np.array(slit.corners)
                if rim == "corner":
                    v = int(cands[np.argmin(np.abs(X[cands, 0] - tx))])
                else:  # outer = farther from the midline
                    far = int(np.argmax(np.abs(X[cands, 0])))
                    v = int(cands[far if rim == "outer" else 1 - far])
            else:
                ids = slit.upper if rim == "upper" else slit.lower
                v = int(ids[np.argmin(np.abs(X[ids, 0] - tx))])
            f = incident[v]
        bary = (faces[f] == v).astype(np.float64)
        out_f.append(f), out_b.append(bary)
    ids = np.array([m for m, _, _ in LANDMARKS], dtype=np.int64)
    return np.array(out_f, dtype=np.int64), np.array(out_b, dtype=np.float32), ids


def _project(X: np.ndarray, faces: np.ndarray, q: np.ndarray, axis: int, sign: float) -> tuple[int, np.ndarray]:
    """Outermost triangle (along ``sign * axis``) under the 2-D point ``q`` of the other two axes."""
    other = [k for k in range(3) if k != axis]
    tri = X[faces]
    a, b, c = (tri[:, k][:, other] for k in range(3))
    v0, v1, v2 = b - a, c - a, q[None, :] - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = np.where(np.abs(den) < 1e-12, np.nan, den)
    l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    l0 = 1.0 - l1 - l2
    inside = (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
    depth = sign * (l0 * tri[:, 0, axis] + l1 * tri[:, 1, axis] + l2 * tri[:, 2, axis])
    f = int(np.nanargmax(np.where(inside, depth, -np.inf)))
    assert inside[f], f"landmark at {q} misses the toy head"
    bary = np.clip([l0[f], l1[f], l2[f]], 0.0, 1.0)
    return f, bary / bary.sum()


@lru_cache(maxsize=1)
def _build() -> FlameModel:
    topo = topology()
    X = evaluate()  # cm
    n_shape = len(SHAPE_NAMES)
    shapedirs = np.zeros((len(X), 3, n_shape))
    for k in range(n_shape):
        e = np.zeros(n_shape)
        e[k] = 1.0
        shapedirs[:, :, k] = 0.5 * (evaluate(e) - evaluate(-e))
    w_jaw = _jaw_weights(X)
    R = _regressor(X)
    jaw = R[2] @ X
    f_lm, b_lm, ids_lm = _landmarks(X, topo.faces)
    head = (topo.part != 0) | (X[:, 1] > -12.5)
    model = FlameModel(
        v_template=(X * CM).astype(np.float32),
        faces=topo.faces.astype(np.int64),
        shapedirs=(shapedirs * CM).astype(np.float32),
        exprdirs=(_expressions(X, w_jaw, jaw) * CM).astype(np.float32),
        posedirs=np.zeros((len(X), 3, 36), np.float32),
        J_regressor=R.astype(np.float32),
        parents=np.array([-1, 0, 1, 1, 1], dtype=np.int64),
        lbs_weights=_skinning(X, w_jaw).astype(np.float32),
        landmark_faces=f_lm, landmark_bary=b_lm, landmark_ids=ids_lm,
        head_vertex_mask=head, expression_names=list(EXPRESSION_NAMES),
        shape_names=list(SHAPE_NAMES), model_id=TOY_MODEL_ID, meta={"source": "procedural"},
    )
    return model.validate().set_read_only()


def build_toy_head() -> FlameModel:
    """The toy head (a fresh, writable copy of a cached build; building takes about a second)."""
    return _build().copy()


def eye_centre(side: str) -> np.ndarray:
    """Rest centre (metres) of the ``"left"`` (+x) or ``"right"`` eyeball."""
    return (EYE_CENTRE * [1 if side == "left" else -1, 1, 1] * CM).astype(np.float32)
