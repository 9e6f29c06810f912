"""Geometry of the procedural toy head: topology and a vertex function of a few parameters.

The head surface is a star-shaped implicit body (cranium, mid face, jaw, neck blended with a
smooth minimum) sampled along rays from a point inside it on a latitude/longitude grid that is
dense over the face. Facial features (nose, lips, brows, chin, cheeks, ears) are height offsets on
top; the eye region is re-shaped so the eyelids drape over spherical eyeballs. Eyes and mouth are
*slits* in the grid (a row segment whose vertices are duplicated), so lids can blink and the jaw
can open; each slit is closed behind by a pocket, which keeps the whole surface watertight and
consistently oriented. Eyeballs are separate closed spheres.

:func:`evaluate` maps shape coefficients (std units) and eyelid openness to vertices; the rig in
:mod:`backend.flame.toy` turns differences of it into blendshapes. Work is in centimetres (the
design numbers follow average adult proportions, close to MediaPipe's canonical face); the rig
converts to metres.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

RAY_ORIGIN = np.array([0.0, -1.0, -1.5])
EYE_CENTRE = np.array([3.15, 1.05, 6.85])  # left eye (+x); the right eye mirrors x
EYE_RADIUS = 1.2
LID_RADIUS = 1.33  # eyelid rims lie on this sphere around the eye centre
EYE_SLIT_Y = 1.0  # height of the eye slit row at the eye centre
EYE_HALF_WIDTH = 1.3  # corner to centre, x
MOUTH_SLIT_Y = -5.9
MOUTH_HALF_WIDTH = 2.45
UPPER_LID_OPEN = 0.5  # upper rim above the slit at the centre, open eye
LOWER_LID_OPEN = 0.28  # lower rim below the slit
NECK_BOTTOM_Y = -19.0
JAW_AXIS = np.array([0.0, -1.5, 0.5])  # jaw hinge (between the two temporomandibular joints)

#: shape components: name and its effect per unit (one "standard deviation")
SHAPE_NAMES = (
    "head_width", "head_height", "head_depth", "face_length", "jaw_width", "nose_length",
    "nose_width", "eye_spacing", "lip_fullness", "brow_prominence", "chin_protrusion", "cheek_fullness",
)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(k - np.abs(a - b), 0.0, None) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _superq(p: np.ndarray, c: tuple, a: tuple, e_xz: float, e_y: float) -> np.ndarray:
    """Approximate signed distance (cm) of a superquadric: exponent e_xz across, e_y along y."""
    q = np.abs((p - np.asarray(c)) / np.asarray(a))
    h = (q[..., 0] ** e_xz + q[..., 2] ** e_xz) ** (1.0 / e_xz)
    f = (h**e_y + q[..., 1] ** e_y) ** (1.0 / e_y)
    return (f - 1.0) * min(a)


def implicit(p: np.ndarray) -> np.ndarray:
    """Head body: negative inside. Every part contains RAY_ORIGIN, so the union is star-shaped."""
    cranium = _superq(p, (0.0, 2.0, -0.4), (7.45, 10.0, 9.95), 2.25, 2.0)
    midface = _superq(p, (0.0, -2.2, 0.0), (6.9, 5.6, 8.4), 2.3, 2.6)
    jaw = _superq(p, (0.0, -7.1, 0.4), (5.7, 4.5, 8.2), 2.3, 4.0)
    r = np.sqrt(p[..., 0] ** 2 + (p[..., 2] + 1.8) ** 2) - 5.6
    neck = np.maximum(r, np.maximum(NECK_BOTTOM_Y - p[..., 1], p[..., 1] - 1.0))
    head = _smin(_smin(cranium, midface, 1.6), jaw, 1.8)
    return _smin(head, neck, 2.2)


def _ray_cast(dirs: np.ndarray) -> np.ndarray:
    """Distance along each ray from RAY_ORIGIN to the outermost surface crossing."""
    steps = np.linspace(0.0, 30.0, 151)
    pts = RAY_ORIGIN + dirs[:, None, :] * steps[None, :, None]
    inside = implicit(pts) < 0
    last = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)  # last inside sample
    lo, hi = steps[last], steps[np.minimum(last + 1, len(steps) - 1)]
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        ins = implicit(RAY_ORIGIN + dirs * mid[:, None]) < 0
        lo, hi = np.where(ins, mid, lo), np.where(ins, hi, mid)
    return 0.5 * (lo + hi)


def _spaced(a: float, b: float, spacing, scale: float = 1.0) -> np.ndarray:
    """Points from a to b whose local spacing follows ``spacing(t)`` (times ``scale``)."""
    t = np.linspace(a, b, 4001)
    dens = 1.0 / (spacing(t) * scale)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(t))])
    n = max(int(round(cum[-1])), 2)
    return np.interp(np.linspace(0.0, cum[-1], n + 1), cum, t)


def _theta_spacing(t: np.ndarray) -> np.ndarray:
    d = np.degrees(t)
    s = 9.0 - 6.9 * _smoothstep(28, 58, d) + 7.0 * _smoothstep(138, 160, d)
    s -= 0.55 * np.exp(-0.5 * ((d - 79.0) / 5.0) ** 2) + 0.6 * np.exp(-0.5 * ((d - 116.0) / 6.0) ** 2)
    return np.radians(s)


def _phi_spacing(p: np.ndarray) -> np.ndarray:
    d = np.degrees(np.abs(p))
    return np.radians(1.9 + 13.0 * _smoothstep(36, 105, d))


@dataclass(frozen=True)
class Slit:
    """A slit in grid row ``row`` between corner columns ``j0 < j1`` (upper ids = grid ids)."""

    row: int
    j0: int
    j1: int
    corners: tuple[int, int]
    upper: np.ndarray  # vertex ids of the upper rim, columns j0+1..j1-1
    lower: np.ndarray  # their duplicated lower-rim twins

    def loop(self) -> np.ndarray:
        """Boundary loop: corner0, upper rim, corner1, lower rim reversed."""
        return np.concatenate([[self.corners[0]], self.upper, [self.corners[1]], self.lower[::-1]])

    def loop_side(self) -> np.ndarray:
        return np.concatenate([[0], np.ones(len(self.upper)), [0], -np.ones(len(self.lower))]).astype(np.int8)


@dataclass(frozen=True)
class Topology:
    """Fixed connectivity and per-vertex bookkeeping of the toy head."""

    theta: np.ndarray
    phi: np.ndarray
    faces: np.ndarray
    num_vertices: int
    grid_index: np.ndarray  # (V,) ray index (row * NC + col, crown = NR*NC, bottom = NR*NC+1), -1 if none
    row: np.ndarray  # (V,) grid row, -1 crown / bags / eyes, NR bottom
    col: np.ndarray
    side: np.ndarray  # (V,) +1 upper rim copy, -1 lower rim copy, 0 otherwise
    part: np.ndarray  # (V,) 0 skin, 1 eye pocket, 2 mouth pocket, 3 left eyeball, 4 right eyeball
    eye_slits: tuple[Slit, Slit]  # left (+x), right (-x)
    mouth_slit: Slit
    pockets: dict  # name -> (ring vertex ids (K, L), centre id)
    eyeballs: tuple[np.ndarray, np.ndarray]  # left, right: (rings+2,) ids; rows of a UV sphere
    eye_rings: int
    eye_segments: int

    @property
    def num_rows(self) -> int:
        return len(self.theta)

    @property
    def num_cols(self) -> int:
        return len(self.phi)


def _ray_dirs(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    d = np.stack([np.sin(th) * np.sin(ph), np.cos(th), np.sin(th) * np.cos(ph)], -1).reshape(-1, 3)
    return np.concatenate([d, [[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]])


@lru_cache(maxsize=1)
def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and base surface points (rays, then crown, then bottom)."""
    theta = _spaced(np.radians(5.0), np.radians(174.0), _theta_spacing)
    half = _spaced(0.0, np.pi, _phi_spacing)  # 0 .. pi
    phi = np.concatenate([-half[-2:0:-1], half])  # symmetric, ends at pi; mirror(j) = 2(M-1) - j
    dirs = _ray_dirs(theta, phi)
    base = RAY_ORIGIN + dirs * _ray_cast(dirs)[:, None]
    return theta, phi, base


def _pick_slit(base_grid: np.ndarray, y: float, x0: float, x1: float, phi: np.ndarray) -> tuple[int, int, int]:
    """Row passing closest to (slit centre, y), and the columns nearest x0 < x1 in that row."""
    front = (np.cos(phi) > 0.5)[None, :]
    xc = 0.5 * (x0 + x1)
    dist = (base_grid[..., 0] - xc) ** 2 + (base_grid[..., 1] - y) ** 2
    row = int(np.unravel_index(np.argmin(np.where(front, dist, np.inf)), dist.shape)[0])
    xs = np.where(front[0], base_grid[row, :, 0], np.inf)
    return row, int(np.argmin(np.abs(xs - x0))), int(np.argmin(np.abs(xs - x1)))


@lru_cache(maxsize=1)
def topology() -> Topology:
    theta, phi, base = _grid()
    NR, NC = len(theta), len(phi)
    bg = base[: NR * NC].reshape(NR, NC, 3)
    gid = lambda i, j: i * NC + (j % NC)  # noqa: E731
    crown, bottom = NR * NC, NR * NC + 1
    faces: list[tuple[int, int, int]] = []
    for i in range(NR - 1):
        for j in range(NC):
            tl, tr, bl, br = gid(i, j), gid(i, j + 1), gid(i + 1, j), gid(i + 1, j + 1)
            faces += [(tl, bl, br), (tl, br, tr)]
    for j in range(NC):
        faces.append((crown, gid(0, j), gid(0, j + 1)))
        faces.append((bottom, gid(NR - 1, j + 1), gid(NR - 1, j)))
    F = np.array(faces, dtype=np.int64)
    n = NR * NC + 2
    grid_index = list(range(n))
    row = [i for i in range(NR) for _ in range(NC)] + [-1, NR]
    col = [j for _ in range(NR) for j in range(NC)] + [-1, -1]
    side = [0] * n
    part = [0] * n

    def add(gi: int, r: int, c: int, s: int, p: int) -> int:
        grid_index.append(gi), row.append(r), col.append(c), side.append(s), part.append(p)
        return len(grid_index) - 1

    def cut(r: int, j0: int, j1: int) -> Slit:
        uppers, lowers = [], []
        for j in range(j0 + 1, j1):
            u = gid(r, j)
            low = add(u, r, j, -1, 0)
            side[u] = 1
            # faces of the quad row below the slit use the lower twin
            for q in range(j - 1, j + 1):
                for k in (2 * ((r * NC) + q), 2 * ((r * NC) + q) + 1):
                    F[k][F[k] == u] = low
            uppers.append(u), lowers.append(low)
        return Slit(r, j0, j1, (gid(r, j0), gid(r, j1)), np.array(uppers), np.array(lowers))

    ex, hw = EYE_CENTRE[0], EYE_HALF_WIDTH
    r_e, j0, j1 = _pick_slit(bg, EYE_SLIT_Y, ex - hw, ex + hw, phi)
    left_eye = cut(r_e, j0, j1)
    mirror = lambda j: 2 * (len(phi) // 2 - 1) - j  # noqa: E731
    right_eye = cut(r_e, mirror(j1), mirror(j0))
    r_m, m0, m1 = _pick_slit(bg, MOUTH_SLIT_Y, -MOUTH_HALF_WIDTH, MOUTH_HALF_WIDTH, phi)
    mouth = cut(r_m, m0, m1)
    faces_l = [tuple(f) for f in F]
    pockets = {}
    for name, slit, rings, p in (("eye_left", left_eye, 2, 1), ("eye_right", right_eye, 2, 1), ("mouth", mouth, 3, 2)):
        pockets[name] = _pocket(slit, rings, faces_l, add, p)
    eyeballs = []
    n_rings, n_seg = 9, 16
    for p in (3, 4):
        ids = [add(-1, -1, -1, 0, p) for _ in range(n_rings * n_seg + 2)]
        front, back = ids[-2], ids[-1]
        ring = lambda k, s: ids[k * n_seg + (s % n_seg)]  # noqa: E731
        for s in range(n_seg):
            faces_l.append((front, ring(0, s), ring(0, s + 1)))
            for k in range(n_rings - 1):
                a, b, c, d = ring(k, s), ring(k, s + 1), ring(k + 1, s), ring(k + 1, s + 1)
                faces_l += [(a, c, d), (a, d, b)]
            faces_l.append((back, ring(n_rings - 1, s + 1), ring(n_rings - 1, s)))
        eyeballs.append(np.array(ids))
    return Topology(
        theta=theta, phi=phi, faces=np.array(faces_l, dtype=np.int64), num_vertices=len(grid_index),
        grid_index=np.array(grid_index), row=np.array(row), col=np.array(col), side=np.array(side, np.int8),
        part=np.array(part, np.int8), eye_slits=(left_eye, right_eye), mouth_slit=mouth, pockets=pockets,
        eyeballs=(eyeballs[0], eyeballs[1]), eye_rings=n_rings, eye_segments=n_seg,
    )


def _pocket(slit: Slit, n_rings: int, faces: list, add, part: int) -> tuple[np.ndarray, int]:
    """Close a slit with a pocket: rings of new vertices behind the loop, then a fan."""
    loop = slit.loop()
    L = len(loop)
    half_edges = {(f[k], f[(k + 1) % 3]) for f in faces for k in range(3)}
    forward = (int(loop[0]), int(loop[1])) in half_edges
    rings = [loop]
    for _ in range(n_rings):
        rings.append(np.array([add(-1, -1, -1, 0, part) for _ in range(L)]))
    centre = add(-1, -1, -1, 0, part)
    for k in range(n_rings):
        a_ring, b_ring = rings[k], rings[k + 1]
        for s in range(L):
            a0, a1, b0, b1 = a_ring[s], a_ring[(s + 1) % L], b_ring[s], b_ring[(s + 1) % L]
            if forward:  # existing half-edge a0->a1: use a1->a0
                faces += [(a1, a0, b0), (a1, b0, b1)]
            else:
                faces += [(a0, a1, b1), (a0, b1, b0)]
    last = rings[-1]
    for s in range(L):
        a0, a1 = last[s], last[(s + 1) % L]
        faces.append((a1, a0, centre) if forward else (a0, a1, centre))
    return np.stack(rings[1:]), centre
