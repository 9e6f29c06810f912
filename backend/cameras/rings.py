"""Camera rings: the paper's view layouts, key views and clusters (paper S2.3, Fig. S10).

:func:`ring_preset` builds the camera rings of the quality presets (``protocol.PRESETS``). Views are
given by azimuth/elevation relative to the head's forward direction (+z): azimuth 0, elevation 0 is
the frontal camera on the +z axis; positive azimuth moves the camera towards the subject's left
(+x); positive elevation moves it up (+y). The layouts (degrees, ``(azimuth, elevation)``):

* ``"tiny"`` (2 key + 4 other; az +-35, el -10..20): keys (+-20, 5); others (-35, 0), (0, -10),
  (0, 20), (35, 0).
* ``"preview"`` (4 key + 8 other; az +-45, el -10..25): keys az {-25, 25} x el {-2, 18}; others
  az {-45, -15, 15, 45} x el {-10, 25}.
* ``"120"`` (8 key + 24 other; paper S2.3: max azimuth 60, elevation up to 30): others on a grid
  az {-60, -36, -12, 12, 36, 60} x el {-15, 0, 15, 30}; keys at the centres of a 4 x 2 tiling of
  that range, az {-45, -15, 15, 45} x el {-5, 20}.
* ``"360"`` (8 key + 40 other; all azimuths, el -30..+90 as in the paper, so the crown is generated
  and constrains the fit): others on four elevation rings, el -30: 10 views (az 18 + 36k), el 0:
  12 views (az 15 + 30k), el 30: 10 views (az 36k), el 60: 8 views (az 22.5 + 45k); keys uniform
  over the whole range: 7 around the head at el 5 (az 360k/7, the first frontal) and the top view
  at el 90 (looking straight down, image up = the back of the head). Every direction of the range
  lies within ~45 degrees of a key (the covering radius; the best of the 4+4 two-ring layouts is
  no better), and every other view within ~42 degrees.

The non-key views are grouped into clusters of up to 4 neighbouring views (:func:`cluster_views`)
and each cluster is generated conditioned on its 4 nearest key views (paper Fig. S10).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from ..errors import MVP4DError, bad_input
from ..protocol import PRESETS, RING_LAYOUTS
from .camera import _DECIMALS, Camera, _normalize, orbit_camera

# ---------------------------------------------------------------------------------------------
# Angles, keys and clusters
# ---------------------------------------------------------------------------------------------


def _view_direction(cam: Camera, center=None) -> np.ndarray:
    if center is None:
        return -cam.forward
    return _normalize(cam.center - np.asarray(center, dtype=np.float64).reshape(3))


def view_angle(cam_a: Camera, cam_b: Camera, center=None) -> float:
    """Angle in degrees between two cameras' viewing directions.

    Without ``center`` the optical axes are compared (equal to the directions from the centre for
    cameras looking at it); with it, the directions from ``center`` to the camera positions.
    """
    da, db = _view_direction(cam_a, center), _view_direction(cam_b, center)
    return float(np.degrees(np.arccos(np.clip(np.dot(da, db), -1.0, 1.0))))


def _angles(dirs: np.ndarray) -> np.ndarray:
    """(N, N) pairwise angles in degrees between unit directions."""
    return np.degrees(np.arccos(np.clip(dirs @ dirs.T, -1.0, 1.0)))


def farthest_point_keys(dirs: np.ndarray, k: int) -> list[int]:
    """Deterministic farthest-point sampling of ``k`` views over unit view directions (N, 3).

    Starts at the view closest to the mean direction, then repeatedly adds the view farthest (in
    angle) from those chosen; ties go to the lowest index. Returns sorted indices.
    """
    n = len(dirs)
    k = min(k, n)
    if k <= 0:
        return []
    mean = dirs.mean(axis=0)
    first = int(np.lexsort((np.arange(n), -np.round(dirs @ mean, _DECIMALS)))[0])
    ang = np.round(_angles(dirs), _DECIMALS - 3)
    chosen = [first]
    mind = ang[first].copy()
    for _ in range(k - 1):
        mind_masked = np.where(np.isin(np.arange(n), chosen), -np.inf, mind)
        nxt = int(np.argmax(mind_masked))  # argmax returns the first (lowest index) maximum
        chosen.append(nxt)
        mind = np.minimum(mind, ang[nxt])
    return sorted(chosen)


def _cluster_sizes(n: int, max_size: int) -> list[int]:
    k = -(-n // max_size)
    base, extra = divmod(n, k) if k else (0, 0)
    return [base + (1 if i < extra else 0) for i in range(k)]


def _greedy_clusters(dirs: np.ndarray, ang: np.ndarray, sizes: list[int], first_seed: int | None) -> np.ndarray:
    """Greedy seeding: the unassigned view farthest from the unassigned views' mean direction
    (or ``first_seed`` for the first cluster) plus its nearest unassigned neighbours."""
    n = len(dirs)
    label = np.full(n, -1, dtype=np.int64)
    for c, size in enumerate(sizes):
        idx = np.nonzero(label < 0)[0]
        if c == 0 and first_seed is not None:
            seed = first_seed
        else:
            score = np.round(dirs[idx] @ dirs[idx].mean(axis=0), _DECIMALS)
            seed = int(idx[np.lexsort((idx, score))[0]])
        rest = idx[idx != seed]
        order = rest[np.lexsort((rest, ang[seed, rest]))]
        label[[seed, *order[: size - 1].tolist()]] = c
    return label


def _refine_clusters(dirs: np.ndarray, label: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Best-improvement swaps of two views of different clusters while the total spread drops.

    Spread of a cluster = sum of pairwise |di - dj|^2 = n_c^2 - |S_c|^2 for unit vectors (S_c the
    sum of its directions), so with fixed sizes we maximise sum_c |S_c|^2. Returns the labels and
    the final objective.
    """
    n = len(dirs)
    label = label.copy()
    lower = np.tril(np.ones((n, n), dtype=bool))
    delta = dirs[None, :, :] - dirs[:, None, :]  # (i, j) -> d_j - d_i
    for _ in range(n * n):
        S = np.stack([dirs[label == c].sum(axis=0) for c in range(k)])
        SA, SB = S[label][:, None, :], S[label][None, :, :]
        gain = (np.sum((SA + delta) ** 2, -1) - np.sum(SA**2, -1)) + (np.sum((SB - delta) ** 2, -1) - np.sum(SB**2, -1))
        gain = np.round(gain, _DECIMALS)
        gain[(label[:, None] == label[None, :]) | lower] = -np.inf
        best = int(np.argmax(gain))
        if gain.flat[best] <= 1e-7:
            break
        i, j = divmod(best, n)
        label[i], label[j] = label[j], label[i]
    S = np.stack([dirs[label == c].sum(axis=0) for c in range(k)])
    return label, float(np.round(np.sum(S**2), _DECIMALS - 3))


def cluster_views(dirs: np.ndarray, max_size: int = 4) -> list[list[int]]:
    """Group views (unit directions (N, 3)) into ceil(N / max_size) clusters of neighbouring views.

    Sizes are as equal as possible (N divisible by ``max_size`` gives clusters of exactly
    ``max_size``). Minimises the summed within-cluster pairwise squared chord distances: greedy
    seeding (each view in turn as the first seed) refined by best-improvement swaps, keeping the
    best result (ties: the earliest start). Deterministic; clusters are returned with sorted
    members, ordered by their smallest member.
    """
    dirs = np.asarray(dirs, dtype=np.float64)
    n = len(dirs)
    if n == 0:
        return []
    sizes = _cluster_sizes(n, max_size)
    k = len(sizes)
    ang = np.round(_angles(dirs), _DECIMALS - 3)
    best_label, best_obj = None, -np.inf
    for first in [None, *range(n)]:
        label, obj = _refine_clusters(dirs, _greedy_clusters(dirs, ang, sizes, first), k)
        if obj > best_obj + 1e-6:
            best_label, best_obj = label, obj
    out = [sorted(int(i) for i in np.nonzero(best_label == c)[0]) for c in range(k)]
    return sorted(out, key=lambda m: m[0])


@dataclass(eq=False)
class CameraRing:
    """The cameras of a multi-view corpus with their key views and clusters (paper Fig. S10).

    ``cameras`` lists every view; ``key_indices`` the key views (generated first);
    ``clusters`` groups the other views in clusters of up to 4 neighbours; ``cluster_keys[c]``
    are the (up to) 4 key views nearest cluster ``c``'s mean direction, nearest first;
    ``azimuth_elevation[i]`` is view ``i``'s (azimuth, elevation) in degrees when known.
    """

    cameras: list[Camera]
    key_indices: list[int]
    clusters: list[list[int]]
    cluster_keys: list[list[int]]
    azimuth_elevation: list[tuple[float, float]] | None = None
    center: np.ndarray | None = field(default=None)

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def other_indices(self) -> list[int]:
        keys = set(self.key_indices)
        return [i for i in range(len(self.cameras)) if i not in keys]

    def directions(self) -> np.ndarray:
        """(N, 3) unit view directions (from the head towards each camera)."""
        return np.stack([_view_direction(c, self.center) for c in self.cameras])

    @classmethod
    def from_cameras(
        cls,
        cameras: Sequence[Camera],
        azimuth_elevation: Sequence[tuple[float, float]] | None = None,
        center=None,
        num_keys: int = 8,
    ) -> "CameraRing":
        """Build the ring from cameras: keys from their ``key`` flags, clusters by view direction.

        If no camera is flagged key, min(``num_keys``, N) keys are chosen by farthest-point
        sampling (:func:`farthest_point_keys`) and those cameras come back flagged.
        """
        cameras = list(cameras)
        if not cameras:
            raise bad_input("the camera ring is empty: it needs at least one camera", "Add cameras to the ring (or choose a ring preset) and try again.")
        if azimuth_elevation is not None and len(azimuth_elevation) != len(cameras):
            raise bad_input(f"azimuth_elevation has {len(azimuth_elevation)} entries for {len(cameras)} cameras")
        c = None if center is None else np.asarray(center, dtype=np.float64).reshape(3)
        dirs = np.stack([_view_direction(cam, c) for cam in cameras])
        keys = [i for i, cam in enumerate(cameras) if cam.key]
        if not keys:
            keys = farthest_point_keys(dirs, num_keys)
            cameras = [replace(cam, key=True) if i in keys else cam for i, cam in enumerate(cameras)]
        keyset = set(keys)
        others = [i for i in range(len(cameras)) if i not in keyset]
        clusters = [[others[j] for j in cl] for cl in cluster_views(dirs[others])]
        kidx = np.array(keys)
        cluster_keys = []
        for cl in clusters:
            m = _normalize(dirs[cl].mean(axis=0))
            ang = np.round(np.degrees(np.arccos(np.clip(dirs[kidx] @ m, -1.0, 1.0))), _DECIMALS - 3)
            order = np.lexsort((kidx, ang))
            cluster_keys.append([int(kidx[o]) for o in order[:4]])
        ae = None if azimuth_elevation is None else [(float(a), float(e)) for a, e in azimuth_elevation]
        return cls(cameras=cameras, key_indices=keys, clusters=clusters, cluster_keys=cluster_keys,
                   azimuth_elevation=ae, center=c)


def closest_reference_angle(ring: CameraRing, view_index: int, reference_indices: Sequence[int]) -> float:
    """Smallest angle (degrees) between view ``view_index`` and any of ``reference_indices``."""
    refs = list(reference_indices)
    if not refs:
        raise bad_input("closest_reference_angle: no reference views given")
    cam = ring.cameras[view_index]
    return min(view_angle(cam, ring.cameras[r], ring.center) for r in refs)


# ---------------------------------------------------------------------------------------------
# Ring presets
# ---------------------------------------------------------------------------------------------


def ring_preset(
    name: str,
    *,
    center=(0.0, 0.0, 0.0),
    distance: float = 1.0,
    focal_px: float | None = None,
    resolution: int | None = None,
) -> CameraRing:
    """The camera ring of quality preset ``name`` (``protocol.PRESETS``) around ``center``.

    Key views come first (named ``key00``…), then the other views (``view00``…).
    ``resolution`` defaults to the preset's; ``focal_px`` defaults to 3 x resolution (at 1 m a
    512 px image then spans ~0.33 m, about the cropped head of CAP4D's 1.2x head box).
    """
    if name not in RING_LAYOUTS or name not in PRESETS:
        raise bad_input(f"unknown camera ring preset {name!r}", f"Choose one of {', '.join(PRESETS)}.")
    preset = PRESETS[name]
    keys, others = RING_LAYOUTS[name]
    if (len(keys), len(others)) != (preset.num_key_views, preset.num_other_views):  # pragma: no cover
        raise MVP4DError("INTERNAL", f"ring layout {name!r} does not match protocol.PRESETS")
    res = preset.resolution if resolution is None else int(resolution)
    f = 3.0 * res if focal_px is None else float(focal_px)
    cams, ae = [], []
    for is_key, views in ((True, keys), (False, others)):
        for i, (az, el) in enumerate(views):
            nm = f"key{i:02d}" if is_key else f"view{i:02d}"
            cams.append(orbit_camera(az, el, center=center, distance=distance, focal_px=f, resolution=res,
                                     name=nm, key=is_key))
            ae.append((az, el))
    return CameraRing.from_cameras(cams, azimuth_elevation=ae, center=center)

