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

Ring presets live in :mod:`backend.cameras.rings`, Blender conversions in
:mod:`backend.cameras.blender`; everything is re-exported from :mod:`backend.cameras`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from ..errors import bad_input
from ..protocol import CameraSpec

_DECIMALS = 9  # rounding used for deterministic tie-breaking between (nearly) equal angles


def _as_matrix(m, shape: tuple[int, int], what: str) -> np.ndarray:
    # torch tensors are accepted without importing torch here: this module is torch-free so the
    # Blender add-on imports it (through mvp4d_blender/backend_link.py) as the one camera definition
    a = np.asarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m, dtype=np.float64)
    if a.shape != shape:
        raise bad_input(f"{what} must have shape {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise bad_input(f"{what} contains non-finite values")
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
            raise bad_input(f"camera {self.name!r}: image size must be positive, got {self.width}x{self.height}")
        if not (self.K[0, 0] > 0 and self.K[1, 1] > 0):
            raise bad_input(f"camera {self.name!r}: focal lengths must be positive")
        if not np.allclose(self.world_to_cam[3], [0.0, 0.0, 0.0, 1.0]):
            raise bad_input(f"camera {self.name!r}: world_to_cam's last row must be [0, 0, 0, 1]")
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
            raise bad_input(f"crop size must be positive, got size={size}, out_size={out_size}")
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


def stack_K(cameras: Sequence[Camera], dtype=None, device=None) -> "torch.Tensor":  # noqa: F821
    """(B, 3, 3) intrinsics of ``cameras`` as a torch tensor (float32 by default)."""
    import torch

    return torch.as_tensor(np.stack([c.K for c in cameras]), dtype=dtype or torch.float32, device=device)


def stack_world_to_cam(cameras: Sequence[Camera], dtype=None, device=None) -> "torch.Tensor":  # noqa: F821
    """(B, 4, 4) world->camera transforms of ``cameras`` as a torch tensor (float32 by default)."""
    import torch

    return torch.as_tensor(np.stack([c.world_to_cam for c in cameras]), dtype=dtype or torch.float32, device=device)


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
        raise bad_input("look_at: eye and target coincide")
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9 * max(np.linalg.norm(up), 1e-300):
        raise bad_input("look_at: the up vector is parallel to the viewing direction", "Pass another up vector.")
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
        raise bad_input(f"orbit_camera: distance must be positive, got {distance}")
    w, h = (resolution, resolution) if np.isscalar(resolution) else resolution
    c = np.asarray(center, dtype=np.float64).reshape(3)
    eye = c + distance * orbit_direction(azimuth_deg, elevation_deg)
    w2c = look_at(eye, c, up=_orbit_up(azimuth_deg, elevation_deg))
    return Camera(K=intrinsics(focal_px, int(w), int(h)), world_to_cam=w2c, width=int(w), height=int(h),
                  name=name, key=key)

