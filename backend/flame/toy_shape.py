"""Vertex positions of the toy head as a function of shape coefficients and eyelid openness.

:func:`evaluate` is the one geometry function of the toy head (centimetres). Everything that
varies (identity components, blinking) is a parameter of it, so blendshapes are simple
differences of two evaluations (:mod:`backend.flame.toy`). Features are attached to *material*
coordinates (the base surface point of each vertex), so moving a vertex never slides a feature
over the skin.
"""

from __future__ import annotations

import numpy as np

from .toy_mesh import (
    EYE_CENTRE, EYE_RADIUS, LID_RADIUS, LOWER_LID_OPEN, SHAPE_NAMES, UPPER_LID_OPEN, Topology, _grid,
    _smoothstep, topology,
)


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _nose(x: np.ndarray, y: np.ndarray, length: float, width: float) -> np.ndarray:
    """Height of the nose over the face (cm): bridge from the nasion to a rounded tip, alae."""
    y_n, y_t, y_b = 1.7, -2.35 - 0.15 * length, -3.75
    H = 2.15 * (1.0 + 0.12 * length)
    w = 1.0 + 0.1 * width
    t_up = np.clip((y_n - y) / (y_n - y_t), 0.0, 1.0)
    t_dn = np.clip((y_t - y) / (y_t - y_b), 0.0, 1.0)
    prof = np.where(y >= y_t, t_up**1.05, 0.14 + 0.86 * (1.0 - t_dn**2))
    prof = np.where(y < y_b, 0.14 * np.exp(-(((y_b - y) / 0.35) ** 2)), prof)
    sigma = w * np.where(y >= y_t, 0.5 + 0.3 * t_up, 0.8 - 0.05 * t_dn)
    ridge = H * prof * np.exp(-0.5 * np.abs(x / sigma) ** 2.4)
    tip = 0.22 * (1.0 + 0.12 * length) * _gauss(x, y, 0.0, y_t + 0.05, 0.75 * w, 0.6)
    alae = 0.45 * _gauss(np.abs(x), y, 1.2 * w, -3.2, 0.4, 0.45)
    return ridge + tip + alae


def _features(x: np.ndarray, y: np.ndarray, s: dict[str, float]) -> np.ndarray:
    """Height offsets (cm, along +z) of the facial features at material coordinates."""
    ax = np.abs(x)
    z = _nose(x, y, s["nose_length"], s["nose_width"])
    z += 0.55 * _gauss(x, y, 0.0, -5.6, 2.3, 2.2)  # dental arch under the lips
    u = np.clip((x / 2.6) ** 2, 0.0, 1.0)
    lip_w = (1.0 - u) ** 0.9
    f = 1.0 + 0.25 * s["lip_fullness"]
    upper = 0.55 * _gauss(0, y, 0, -5.35 - 0.35 * u, 1, 0.4 - 0.2 * u)
    lower = 0.55 * _gauss(0, y, 0, -6.5 + 0.45 * u, 1, 0.5 - 0.3 * u)
    z += f * lip_w * (upper + lower)
    z -= lip_w * 0.12 * _gauss(0, y, 0, -5.9, 1, 0.2)  # lips meet slightly recessed
    z -= 0.3 * _gauss(ax, y, 2.55, -5.9, 0.45, 0.45)  # mouth corners
    z -= 0.25 * _gauss(x, y, 0.0, -7.6, 1.8, 0.5)  # groove above the chin
    z += (0.75 + 0.28 * s["chin_protrusion"]) * _gauss(x, y, 0.0, -10.1, 1.7, 1.05)
    brow = 0.5 * (1.0 + 0.4 * s["brow_prominence"]) * _gauss(0, y, 0, 3.0 + 0.02 * ax**2, 1, 0.65)
    z += brow * (1.0 - _smoothstep(4.5, 6.3, ax)) - 0.3 * _gauss(x, y, 0.0, 1.5, 1.0, 0.6)  # nasion dip
    z += 0.5 * _gauss(ax, y, 4.7, -0.9, 1.4, 1.1)  # cheekbones
    z += (0.25 + 0.22 * s["cheek_fullness"]) * _gauss(ax, y, 3.9, -4.0, 1.5, 1.6)
    return z


def _lid_offsets(topo: Topology, base: np.ndarray, mat: np.ndarray, blink: tuple[float, float]) -> np.ndarray:
    """Vertical offset of each skin vertex that opens (or closes) the eye slits."""
    NC = topo.num_cols
    bg = base[: topo.num_rows * NC].reshape(topo.num_rows, NC, 3)
    dy = np.zeros(len(mat))
    skin = topo.grid_index >= 0
    row, col, side = topo.row[skin], topo.col[skin], topo.side[skin]
    for slit, b in zip(topo.eye_slits, blink):
        xa, xb = bg[slit.row, slit.j0, 0], bg[slit.row, slit.j1, 0]
        xc, hw = 0.5 * (xa + xb), 0.5 * abs(xb - xa)
        u = (mat[:, 0] - xc) / hw
        prof = np.clip(1.0 - u * u, 0.0, 1.0) ** 0.8
        prof = np.where(np.cos(topo.phi[np.maximum(col, 0)]) > 0.5, prof, 0.0)
        y_slit = bg[slit.row, np.maximum(col, 0), 1]
        d = mat[:, 1] - y_slit
        upper = (row < slit.row) | ((row == slit.row) & (side == 1))
        lower = (row > slit.row) & (row < topo.num_rows) | ((row == slit.row) & (side == -1))
        opening = UPPER_LID_OPEN - b * (UPPER_LID_OPEN + LOWER_LID_OPEN)
        g_up = 0.5 * (1.0 + np.cos(np.pi * np.clip(d / 1.5, 0.0, 1.0)))
        g_dn = 0.5 * (1.0 + np.cos(np.pi * np.clip(-d / 1.1, 0.0, 1.0)))
        dy += np.where(upper, opening * prof * g_up, 0.0) - np.where(lower, LOWER_LID_OPEN * prof * g_dn, 0.0)
    out = np.zeros(topo.num_vertices)
    out[skin] = dy
    return out


def _eye_region_z(p: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Skin depth around an eye: the face pressed into a socket, the lids draped on the eyeball."""
    d = np.hypot(p[:, 0] - centre[0], (p[:, 1] - centre[1]) * np.where(p[:, 1] > centre[1], 0.9, 1.1))
    z_socket = p[:, 2] - 1.6 * (1.0 - _smoothstep(0.6, 2.5, d))
    thick = 0.11 + 0.3 * _smoothstep(0.5, 1.4, d)
    z_lid = centre[2] + np.sqrt(np.clip(LID_RADIUS**2 - d * d, 0.0, None)) + thick
    z_lid = z_lid - 10.0 * _smoothstep(1.3, 1.7, d)  # no lid beyond the eyeball
    k = 0.25
    h = np.clip(k - np.abs(z_socket - z_lid), 0.0, None) / k
    return np.maximum(z_socket, z_lid) + h * h * k * 0.25


def _eyeball(topo: Topology, centre: np.ndarray) -> np.ndarray:
    """UV sphere with its poles on the gaze axis (+z) and a slight corneal bulge."""
    n_r, n_s = topo.eye_rings, topo.eye_segments
    alpha = np.arange(1, n_r + 1) * np.pi / (n_r + 1)
    beta = np.arange(n_s) * 2 * np.pi / n_s
    a, b = np.meshgrid(alpha, beta, indexing="ij")
    r = EYE_RADIUS + 0.09 * np.cos(np.clip(a / 0.6, 0.0, 1.0) * np.pi / 2) ** 2
    pts = np.stack([r * np.sin(a) * np.cos(b), r * np.sin(a) * np.sin(b), r * np.cos(a)], -1).reshape(-1, 3)
    poles = np.array([[0.0, 0.0, EYE_RADIUS + 0.09], [0.0, 0.0, -EYE_RADIUS]])
    return np.concatenate([pts, poles]) + centre


def _warp(p: np.ndarray, s: dict[str, float]) -> np.ndarray:
    """Identity components that reshape the whole head smoothly (head size, jaw, eye spacing)."""
    x, y, z = p[:, 0].copy(), p[:, 1].copy(), p[:, 2].copy()
    for sign in (1.0, -1.0):
        e = EYE_CENTRE * [sign, 1, 1]
        r2 = (x - e[0]) ** 2 + (y - e[1]) ** 2
        x = x + sign * 0.2 * s["eye_spacing"] * np.exp(-((r2 / 2.2**2) ** 2)) * _smoothstep(2.0, 5.0, z)
    jaw = _smoothstep(-3.0, -8.0, y) * (1.0 - _smoothstep(-11.0, -14.0, y))
    x = x * (1.0 + 0.06 * s["jaw_width"] * jaw)
    y = y - 0.5 * s["face_length"] * _smoothstep(0.0, -11.0, y)
    y = y + 0.55 * s["head_height"] * _smoothstep(1.0, 11.0, y)
    z = z - 0.5 * s["head_depth"] * _smoothstep(-1.0, -9.0, z)
    x = x * (1.0 + 0.035 * s["head_width"])
    return np.stack([x, y, z], -1)


def evaluate(shape: np.ndarray | None = None, blink: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """All vertices (cm) for shape coefficients (``len(SHAPE_NAMES)``, std units) and blinks.

    ``blink = (left, right)``: 0 open, 1 closed, negative opens wider.
    """
    topo = topology()
    _, _, base = _grid()
    coeff = np.zeros(len(SHAPE_NAMES)) if shape is None else np.asarray(shape, dtype=np.float64)
    s = dict(zip(SHAPE_NAMES, coeff))
    V = topo.num_vertices
    P = np.zeros((V, 3))
    skin = topo.grid_index >= 0
    mat = base[topo.grid_index[skin]]
    front = _smoothstep(1.0, 5.0, mat[:, 2])
    p = mat.copy()
    p[:, 1] += _lid_offsets(topo, base, mat, blink)[skin]
    p[:, 2] += _features(mat[:, 0], mat[:, 1], s) * front
    ear = 1.3 * _gauss(mat[:, 1], mat[:, 2], -0.8, -1.4, 2.0, 1.0) * _smoothstep(4.0, 6.0, np.abs(mat[:, 0]))
    p[:, 0] += np.sign(mat[:, 0]) * ear
    for sign in (1.0, -1.0):
        e = EYE_CENTRE * [sign, 1, 1]
        near = (np.sign(mat[:, 0]) == sign) & (mat[:, 2] > 3.0)
        p[near, 2] = _eye_region_z(p[near], e)
    P[skin] = p
    # pockets behind the slits
    for name, slit in (("eye_left", topo.eye_slits[0]), ("eye_right", topo.eye_slits[1])):
        e = EYE_CENTRE * [1 if name == "eye_left" else -1, 1, 1]
        rings, centre = topo.pockets[name]
        rim = P[slit.loop()]
        for k, t in enumerate((0.45, 0.8)):
            P[rings[k]] = rim + t * (e + [0, 0, -0.2] - rim)
        P[centre] = e + [0, 0, -0.5]
    mouth = topo.mouth_slit
    rings, centre = topo.pockets["mouth"]
    rim, side = P[mouth.loop()], mouth.loop_side()
    lens = np.clip(1.0 - (rim[:, 0] / 2.6) ** 2, 0.0, 1.0)
    for k in range(len(rings)):
        q = rim.copy()
        q[:, 0] *= 1.0 - 0.12 * (k + 1)
        q[:, 1] += side * 0.35 * (k + 1) * lens
        q[:, 2] -= 0.75 * (k + 1)
        P[rings[k]] = q
    P[centre] = [0.0, rim[:, 1].mean(), rim[:, 2].max() - 3.0]
    P = _warp(P, s)
    # eyeballs move rigidly with the warp at their centre
    for ids, sign in zip(topo.eyeballs, (1.0, -1.0)):
        e = EYE_CENTRE * [sign, 1, 1]
        P[ids] = _eyeball(topo, _warp(e[None], s)[0])
    return P
