"""Cameras and camera rings: the one definition of the camera conventions (docs/architecture.md).

Conventions
-----------
* **World** = FLAME space: metres, +y up, the face looks along +z, the head at the origin after
  tracking (the reference camera absorbs the head pose).
* **Camera** = OpenCV pinhole: ``world_to_cam`` is a 4x4 rigid transform into camera axes
  +x right, +y down, +z forward; ``K`` holds intrinsics in pixels. **Pixel centres are at integer
  coordinates**: pixel (row i, col j) is centred at (u, v) = (j, i), so the image spans
  u in [-0.5, W - 0.5] and a centred principal point is ((W - 1) / 2, (H - 1) / 2).
* **Blender world** is +z up; Blender (x, y, z) = FLAME (x, -z, y) (:data:`FLAME_TO_BLENDER`).
  Blender cameras look down their local -z with +y up. Blender measures pixels from the image
  edge (pixel centres at +0.5); the conversion below accounts for that half pixel.

Rings
-----
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
* ``"360"`` (8 key + 40 other; all azimuths, el -30..90): others on four elevation rings, el -30:
  8 views (az 22.5 + 45k), el 0: 12 views (az 30k), el 30: 12 views (az 15 + 30k), el 60: 8 views
  (az 45k); keys on two staggered rings, el -10 at az {0, 90, 180, -90} and el 45 at
  az {45, 135, -135, -45} (every direction of the range lies within ~46 degrees of a key).

The non-key views are grouped into clusters of up to 4 neighbouring views (:func:`cluster_views`)
and each cluster is generated conditioned on its 4 nearest key views (paper Fig. S10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Sequence

import numpy as np
import torch

from .errors import MVP4DError
from .protocol import PRESETS, CameraSpec

__all__ = [
    "Camera",
    "CameraRing",
    "BlenderCamera",
    "FLAME_TO_BLENDER",
    "BLENDER_TO_FLAME",
    "RING_LAYOUTS",
    "intrinsics",
    "look_at",
    "orbit_camera",
    "orbit_direction",
    "ring_preset",
    "stack_K",
    "stack_world_to_cam",
    "view_angle",
    "closest_reference_angle",
    "farthest_point_keys",
    "cluster_views",
    "opencv_from_blender",
    "blender_from_opencv",
]

_DECIMALS = 9  # rounding used for deterministic tie-breaking between (nearly) equal angles


def _bad(message: str, hint: str | None = None) -> MVP4DError:
    return MVP4DError("BAD_INPUT", message, hint)


def _as_matrix(m, shape: tuple[int, int], what: str) -> np.ndarray:
    a = np.asarray(m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else m, dtype=np.float64)
    if a.shape != shape:
        raise _bad(f"{what} must have shape {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise _bad(f"{what} contains non-finite values")
    return a.copy()


def _normalize(v: np.ndarray, axis: int = -1) -> np.ndarray:
    n = np.linalg.norm(v, axis=axis, keepdims=True)
    return v / np.maximum(n, 1e-300)


# ---------------------------------------------------------------------------------------------
# Camera
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Camera:
    """An OpenCV pinhole camera in FLAME world (see the module docstring for the conventions).

    Compared by identity (``eq=False``: the fields are arrays); compare ``K``/``world_to_cam``.
    """

    K: np.ndarray  # (3, 3) float64 intrinsics in pixels
    world_to_cam: np.ndarray  # (4, 4) float64 rigid transform, OpenCV camera axes
    width: int
    height: int
    name: str = "camera"
    key: bool = False

    def __post_init__(self) -> None:
        self.K = _as_matrix(self.K, (3, 3), f"camera {self.name!r}: K")
        self.world_to_cam = _as_matrix(self.world_to_cam, (4, 4), f"camera {self.name!r}: world_to_cam")
        self.width, self.height = int(self.width), int(self.height)
        if self.width < 1 or self.height < 1:
            raise _bad(f"camera {self.name!r}: image size must be positive, got {self.width}x{self.height}")
        if not (self.K[0, 0] > 0 and self.K[1, 1] > 0):
            raise _bad(f"camera {self.name!r}: focal lengths must be positive")
        if not np.allclose(self.world_to_cam[3], [0.0, 0.0, 0.0, 1.0]):
            raise _bad(f"camera {self.name!r}: world_to_cam's last row must be [0, 0, 0, 1]")
        self.key = bool(self.key)

    # --- intrinsics ---------------------------------------------------------------------------
    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    # --- extrinsics ---------------------------------------------------------------------------
    @property
    def R(self) -> np.ndarray:
        """(3, 3) world->camera rotation."""
        return self.world_to_cam[:3, :3]

    @property
    def t(self) -> np.ndarray:
        """(3,) world->camera translation."""
        return self.world_to_cam[:3, 3]

    @property
    def cam_to_world(self) -> np.ndarray:
        """(4, 4) inverse of ``world_to_cam`` (rigid inverse)."""
        m = np.eye(4)
        m[:3, :3] = self.R.T
        m[:3, 3] = -self.R.T @ self.t
        return m

    @property
    def center(self) -> np.ndarray:
        """(3,) camera position in world."""
        return -self.R.T @ self.t

    @property
    def forward(self) -> np.ndarray:
        """(3,) unit world direction of the camera's +z (viewing) axis."""
        return _normalize(self.R[2].copy())

    # --- geometry -----------------------------------------------------------------------------
    def project(self, points) -> tuple[np.ndarray, np.ndarray]:
        """Project world points (N, 3) -> pixel coordinates (N, 2) (u, v) and camera depth z (N,)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        pc = p @ self.R.T + self.t
        z = pc[:, 2]
        q = pc @ self.K.T
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = q[:, :2] / q[:, 2:3]
        return uv, z

    def rays(self, height: int | None = None, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """World rays through the pixel centres: ``origins, directions`` (H, W, 3), unit directions.

        With ``height``/``width`` different from the camera's, the intrinsics are rescaled first
        (:meth:`scaled`), e.g. rays at latent resolution.
        """
        h = self.height if height is None else int(height)
        w = self.width if width is None else int(width)
        cam = self if (h, w) == (self.height, self.width) else self.scaled(w, h)
        v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
        pix = np.stack([u, v, np.ones_like(u)], axis=-1)
        d_cam = pix @ np.linalg.inv(cam.K).T
        d = _normalize(d_cam @ cam.R)  # R^T d_cam, row-vector form
        o = np.broadcast_to(cam.center, d.shape).copy()
        return o, d

    def scaled(self, width: int, height: int) -> "Camera":
        """The same camera rendering ``width`` x ``height`` pixels: u' = (u + 0.5) * s - 0.5."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, 0] *= sx
        K[0, 1] *= sx
        K[1, 1] *= sy
        K[0, 2] = (self.cx + 0.5) * sx - 0.5
        K[1, 2] = (self.cy + 0.5) * sy - 0.5
        return replace(self, K=K, width=int(width), height=int(height))

    def cropped(self, x0: float, y0: float, size: float, out_size: int) -> "Camera":
        """Crop a square box and resize it to ``out_size`` x ``out_size``.

        The box's top-left pixel is this camera's pixel (row ``y0``, col ``x0``) and it is ``size``
        pixels wide: it covers u in [x0 - 0.5, x0 + size - 0.5]. It may extend outside the image
        (the caller pads). New coordinates: u' = (u - x0 + 0.5) * out_size / size - 0.5.
        """
        if size <= 0 or out_size <= 0:
            raise _bad(f"crop size must be positive, got size={size}, out_size={out_size}")
        s = out_size / size
        K = self.K.copy()
        K[0, 0] *= s
        K[0, 1] *= s
        K[1, 1] *= s
        K[0, 2] = (self.cx - x0 + 0.5) * s - 0.5
        K[1, 2] = (self.cy - y0 + 0.5) * s - 0.5
        return replace(self, K=K, width=int(out_size), height=int(out_size))

    # --- protocol -----------------------------------------------------------------------------
    def to_spec(self) -> CameraSpec:
        return CameraSpec(
            name=self.name,
            width=self.width,
            height=self.height,
            fx=self.fx,
            fy=self.fy,
            cx=self.cx,
            cy=self.cy,
            world_to_cam=[[float(x) for x in row] for row in self.world_to_cam],
            key=self.key,
        )

    @classmethod
    def from_spec(cls, spec: CameraSpec) -> "Camera":
        K = np.array([[spec.fx, 0.0, spec.cx], [0.0, spec.fy, spec.cy], [0.0, 0.0, 1.0]])
        return cls(K=K, world_to_cam=np.array(spec.world_to_cam, dtype=np.float64), width=spec.width,
                   height=spec.height, name=spec.name, key=spec.key)


def intrinsics(focal_px: float | tuple[float, float], width: int, height: int) -> np.ndarray:
    """(3, 3) K with a centred principal point ((W - 1) / 2, (H - 1) / 2)."""
    fx, fy = (focal_px, focal_px) if np.isscalar(focal_px) else focal_px
    return np.array([[fx, 0.0, (width - 1) / 2.0], [0.0, fy, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def stack_K(cameras: Sequence[Camera], dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(B, 3, 3) intrinsics of ``cameras`` as a torch tensor."""
    return torch.as_tensor(np.stack([c.K for c in cameras]), dtype=dtype, device=device)


def stack_world_to_cam(cameras: Sequence[Camera], dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(B, 4, 4) world->camera transforms of ``cameras`` as a torch tensor."""
    return torch.as_tensor(np.stack([c.world_to_cam for c in cameras]), dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------
# Placement
# ---------------------------------------------------------------------------------------------


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """(4, 4) OpenCV world->camera for a camera at ``eye`` looking at ``target``.

    The image's up direction (-y camera axis) is ``up`` projected orthogonally to the viewing
    direction; ``up`` may not be parallel to it (raises ``BAD_INPUT``).
    """
    eye = np.asarray(eye, dtype=np.float64).reshape(3)
    target = np.asarray(target, dtype=np.float64).reshape(3)
    up = np.asarray(up, dtype=np.float64).reshape(3)
    z = target - eye
    if np.linalg.norm(z) < 1e-12:
        raise _bad("look_at: eye and target coincide")
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9 * max(np.linalg.norm(up), 1e-300):
        raise _bad("look_at: the up vector is parallel to the viewing direction", "Pass another up vector.")
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    m = np.eye(4)
    m[:3, :3] = R
    m[:3, 3] = -R @ eye
    return m


def orbit_direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Unit direction from the head towards a camera at (azimuth, elevation); (0, 0) is +z."""
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])


def _orbit_up(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """d(direction)/d(elevation): world +y made orthogonal to the view; well defined at +-90."""
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([-math.sin(e) * math.sin(a), math.cos(e), -math.sin(e) * math.cos(a)])


def orbit_camera(
    azimuth_deg: float,
    elevation_deg: float,
    *,
    center=(0.0, 0.0, 0.0),
    distance: float = 1.0,
    focal_px: float | tuple[float, float] = 1500.0,
    resolution: int | tuple[int, int] = 512,
    name: str = "camera",
    key: bool = False,
) -> Camera:
    """A camera at ``distance`` from ``center`` in the (azimuth, elevation) direction, looking at it.

    Azimuth 0, elevation 0 is the frontal camera on the +z axis; positive azimuth moves towards the
    subject's left (+x), positive elevation up (+y). The image up direction is the direction of
    increasing elevation, so elevation +-90 (top/bottom views) is well defined: at +90 the face
    (the +z side) is at the bottom of the image, continuing the motion from the front.
    ``resolution`` is ``size`` (square) or ``(width, height)``; the principal point is centred.
    """
    if distance <= 0:
        raise _bad(f"orbit_camera: distance must be positive, got {distance}")
    w, h = (resolution, resolution) if np.isscalar(resolution) else resolution
    c = np.asarray(center, dtype=np.float64).reshape(3)
    eye = c + distance * orbit_direction(azimuth_deg, elevation_deg)
    w2c = look_at(eye, c, up=_orbit_up(azimuth_deg, elevation_deg))
    return Camera(K=intrinsics(focal_px, int(w), int(h)), world_to_cam=w2c, width=int(w), height=int(h),
                  name=name, key=key)


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

    def to_specs(self) -> list[CameraSpec]:
        return [c.to_spec() for c in self.cameras]

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
            raise _bad("the camera ring is empty: it needs at least one camera",
                       "Add cameras to the ring (or choose a ring preset) and try again.")
        if azimuth_elevation is not None and len(azimuth_elevation) != len(cameras):
            raise _bad(f"azimuth_elevation has {len(azimuth_elevation)} entries for {len(cameras)} cameras")
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
        raise _bad("closest_reference_angle: no reference views given")
    cam = ring.cameras[view_index]
    return min(view_angle(cam, ring.cameras[r], ring.center) for r in refs)


# ---------------------------------------------------------------------------------------------
# Ring presets
# ---------------------------------------------------------------------------------------------


def _grid(azimuths: Sequence[float], elevations: Sequence[float]) -> list[tuple[float, float]]:
    return [(float(a), float(e)) for e in elevations for a in azimuths]


#: (key views, other views) as (azimuth, elevation) in degrees, per preset; see the module docstring.
RING_LAYOUTS: dict[str, tuple[list[tuple[float, float]], list[tuple[float, float]]]] = {
    "tiny": (
        [(-20.0, 5.0), (20.0, 5.0)],
        [(-35.0, 0.0), (0.0, -10.0), (0.0, 20.0), (35.0, 0.0)],
    ),
    "preview": (
        _grid([-25, 25], [-2, 18]),
        _grid([-45, -15, 15, 45], [-10, 25]),
    ),
    "120": (
        _grid([-45, -15, 15, 45], [-5, 20]),
        _grid([-60, -36, -12, 12, 36, 60], [-15, 0, 15, 30]),
    ),
    "360": (
        _grid([0, 90, 180, -90], [-10]) + _grid([45, 135, -135, -45], [45]),
        _grid([22.5 + 45 * k - (360 if 22.5 + 45 * k > 180 else 0) for k in range(8)], [-30])
        + _grid([30 * k - (360 if 30 * k > 180 else 0) for k in range(12)], [0])
        + _grid([15 + 30 * k - (360 if 15 + 30 * k > 180 else 0) for k in range(12)], [30])
        + _grid([45 * k - (360 if 45 * k > 180 else 0) for k in range(8)], [60]),
    ),
}


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
        raise _bad(f"unknown camera ring preset {name!r}", f"Choose one of {', '.join(PRESETS)}.")
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


# ---------------------------------------------------------------------------------------------
# Blender <-> OpenCV (pure numpy; the add-on mirrors this)
# ---------------------------------------------------------------------------------------------

#: Homogeneous FLAME -> Blender world: Blender (x, y, z) = FLAME (x, -z, y) (+90 degrees about x).
FLAME_TO_BLENDER = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
BLENDER_TO_FLAME = FLAME_TO_BLENDER.T.copy()
#: OpenCV camera axes (x right, y down, z forward) <-> Blender camera axes (x right, y up, -z forward).
_CV_TO_BL_CAM = np.diag([1.0, -1.0, -1.0, 1.0])

SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")


class BlenderCamera(NamedTuple):
    """Blender camera object/data settings equivalent to an OpenCV :class:`Camera`."""

    matrix_world: np.ndarray  # (4, 4) camera object's world matrix (Blender world, no scale)
    lens_mm: float
    shift_x: float
    shift_y: float
    sensor_width_mm: float
    sensor_height_mm: float
    sensor_fit: str
    res_x: int
    res_y: int
    pixel_aspect_x: float
    pixel_aspect_y: float


def _blender_fit(sensor_fit: str, res_x: int, res_y: int, pixel_aspect: float) -> tuple[str, float, float]:
    """Effective fit ('HORIZONTAL'|'VERTICAL'), view factor in x-pixel units, ycor = aspy/aspx.

    Mirrors Blender's ``BKE_camera_params_compute_viewplane``: AUTO fits the sensor to the larger
    of (aspx * res_x, aspy * res_y).
    """
    if sensor_fit not in SENSOR_FITS:
        raise _bad(f"sensor_fit must be one of {', '.join(SENSOR_FITS)}, got {sensor_fit!r}")
    if pixel_aspect <= 0:
        raise _bad(f"pixel_aspect must be positive, got {pixel_aspect}")
    ycor = 1.0 / pixel_aspect
    fit = sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if pixel_aspect * res_x >= res_y else "VERTICAL"
    viewfac = float(res_x) if fit == "HORIZONTAL" else ycor * res_y
    return fit, viewfac, ycor


def opencv_from_blender(
    matrix_world,
    lens_mm: float,
    sensor_width_mm: float,
    sensor_height_mm: float,
    sensor_fit: str,
    res_x: int,
    res_y: int,
    shift_x: float = 0.0,
    shift_y: float = 0.0,
    pixel_aspect: float = 1.0,
    *,
    name: str = "camera",
    key: bool = False,
) -> Camera:
    """A Blender perspective camera -> OpenCV :class:`Camera` in FLAME world.

    ``matrix_world`` is the camera object's world matrix (scale is ignored); ``res_x``/``res_y``
    the effective render size (resolution percentage applied); ``pixel_aspect`` =
    pixel_aspect_x / pixel_aspect_y. AUTO uses ``sensor_width_mm`` along the larger image side,
    VERTICAL uses ``sensor_height_mm`` along the height (Blender's rules). Blender's principal point
    is the image centre moved by the shift (in units of the fitted image side); converting its
    edge-based pixel coordinates to integer pixel centres subtracts half a pixel.
    """
    M = _as_matrix(matrix_world, (4, 4), "matrix_world")
    if lens_mm <= 0 or sensor_width_mm <= 0 or sensor_height_mm <= 0:
        raise _bad("lens and sensor sizes must be positive")
    fit, viewfac, ycor = _blender_fit(sensor_fit, int(res_x), int(res_y), float(pixel_aspect))
    sensor = sensor_height_mm if sensor_fit == "VERTICAL" else sensor_width_mm
    fx = lens_mm * viewfac / sensor
    fy = fx / ycor
    cx = res_x / 2.0 - shift_x * viewfac - 0.5
    cy = res_y / 2.0 + shift_y * viewfac / ycor - 0.5
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    M = M.copy()
    M[:3, :3] = _normalize(M[:3, :3], axis=0)  # drop object scale
    cam_to_world = BLENDER_TO_FLAME @ M @ _CV_TO_BL_CAM
    R = cam_to_world[:3, :3]
    w2c = np.eye(4)
    w2c[:3, :3] = R.T
    w2c[:3, 3] = -R.T @ cam_to_world[:3, 3]
    return Camera(K=K, world_to_cam=w2c, width=int(res_x), height=int(res_y), name=name, key=key)


def blender_from_opencv(
    camera: Camera,
    sensor_width_mm: float = 36.0,
    sensor_height_mm: float = 24.0,
    sensor_fit: str = "AUTO",
) -> BlenderCamera:
    """An OpenCV :class:`Camera` (FLAME world) -> Blender camera settings (inverse of
    :func:`opencv_from_blender`). fy != fx becomes a pixel aspect (the larger of the two Blender
    aspect values is > 1, the other 1); skew cannot be represented and is dropped."""
    ratio = camera.fy / camera.fx  # = pixel_aspect_x / pixel_aspect_y
    fit, viewfac, ycor = _blender_fit(sensor_fit, camera.width, camera.height, ratio)
    sensor = sensor_height_mm if sensor_fit == "VERTICAL" else sensor_width_mm
    lens = camera.fx * sensor / viewfac
    shift_x = (camera.width / 2.0 - 0.5 - camera.cx) / viewfac
    shift_y = (camera.cy - camera.height / 2.0 + 0.5) * ycor / viewfac
    M = FLAME_TO_BLENDER @ camera.cam_to_world @ _CV_TO_BL_CAM
    asp_x, asp_y = (ratio, 1.0) if ratio >= 1.0 else (1.0, 1.0 / ratio)
    return BlenderCamera(matrix_world=M, lens_mm=float(lens), shift_x=float(shift_x), shift_y=float(shift_y),
                         sensor_width_mm=float(sensor_width_mm), sensor_height_mm=float(sensor_height_mm),
                         sensor_fit=sensor_fit, res_x=camera.width, res_y=camera.height,
                         pixel_aspect_x=float(asp_x), pixel_aspect_y=float(asp_y))
