"""Gaussians bound to mesh triangles (GaussianAvatars form): the one definition of the binding.

Every Gaussian lives in the frame of its parent triangle (v0, v1, v2) (the product's
``docs/architecture.md``, "Formats the code refers to"; re-derived from the formulas, not copied):

=============  ===================================================================
a0             normalize(v1 - v0)
a1 (normal)    normalize(a0 x (v2 - v0))
a2             -normalize(a1 x a0)   (= a0 x a1: the frame is right-handed)
R_face         columns a0, a1, a2
s_face         (|v1 - v0| + |a2 . (v2 - v0)|) / 2
c_face         (v0 + v1 + v2) / 3
=============  ===================================================================

world mean = s R xyz_local + c; world rotation = q_face (x) normalize(q_local) (Hamilton, wxyz);
world scale = exp(log_scale) s; opacity = sigmoid(logit); SH are never rotated (parity with
GaussianAvatars/CAP4D viewers, which evaluate SH with world view directions).

Everything is torch and differentiable (the fit optimises through it). The numpy mirror used by the
exporters and the Blender side is :mod:`backend.avatar.binding_np`; a test keeps them equal.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

__all__ = [
    "LocalGaussians",
    "WorldGaussians",
    "face_frames",
    "local_to_world",
    "world_to_local",
    "local_from_points",
    "nearest_faces",
    "quat_multiply",
    "quat_conjugate",
    "quat_to_matrix",
    "matrix_to_quat",
]

_EPS = 1e-12


# ---------------------------------------------------------------------------------------------
# Quaternions (wxyz, Hamilton product)
# ---------------------------------------------------------------------------------------------


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a (x) b of (..., 4) wxyz quaternions (rotation b first, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def quat_conjugate(q: torch.Tensor) -> torch.Tensor:
    """(w, -x, -y, -z): the inverse rotation of a unit quaternion."""
    return q * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=q.dtype, device=q.device)


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) wxyz (any norm) -> (..., 3, 3) rotation matrix (same formula as gsplat)."""
    w, x, y, z = F.normalize(q, dim=-1, eps=_EPS).unbind(-1)
    m = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return m.reshape(*q.shape[:-1], 3, 3)


def matrix_to_quat(m: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation -> (..., 4) unit wxyz quaternion with w >= 0.

    Robust everywhere (no division by a small number): of the four ways to read the quaternion
    off the matrix (from 4w^2, 4x^2, 4y^2 or 4z^2 = 1 +- diagonal terms), the one with the largest
    square is used; the four squares sum to 4, so it is >= 1. Differentiable.
    """
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    t = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    cand = torch.stack(
        [
            torch.stack([t[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, t[..., 1], m01 + m10, m02 + m20], -1),
            torch.stack([m02 - m20, m01 + m10, t[..., 2], m12 + m21], -1),
            torch.stack([m10 - m01, m02 + m20, m12 + m21, t[..., 3]], -1),
        ],
        dim=-2,
    )  # (..., 4 candidates, 4)
    best = t.argmax(dim=-1, keepdim=True)  # (..., 1)
    q = torch.gather(cand, -2, best[..., None].expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = q / (2.0 * torch.gather(t, -1, best).clamp_min(_EPS).sqrt())
    q = F.normalize(q, dim=-1, eps=_EPS)
    return torch.where(q[..., :1] < 0, -q, q)


# ---------------------------------------------------------------------------------------------
# Triangle frames
# ---------------------------------------------------------------------------------------------


def _faces(faces: torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(faces, device=device).long()


def face_frames(vertices: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triangle frames of ``vertices`` (..., V, 3) for ``faces`` (F, 3).

    Returns ``R`` (..., F, 3, 3) with columns a0, a1 (normal), a2; ``s`` (..., F) the triangle
    size; ``c`` (..., F, 3) the centroid (table in the module docstring).
    """
    faces = _faces(faces, vertices.device)
    v0 = torch.index_select(vertices, -2, faces[:, 0])
    v1 = torch.index_select(vertices, -2, faces[:, 1])
    v2 = torch.index_select(vertices, -2, faces[:, 2])
    e1, e2 = v1 - v0, v2 - v0
    a0 = F.normalize(e1, dim=-1, eps=_EPS)
    a1 = F.normalize(torch.linalg.cross(a0, e2), dim=-1, eps=_EPS)
    a2 = -F.normalize(torch.linalg.cross(a1, a0), dim=-1, eps=_EPS)
    R = torch.stack([a0, a1, a2], dim=-1)
    s = 0.5 * (e1.norm(dim=-1) + (a2 * e2).sum(-1).abs())
    c = (v0 + v1 + v2) / 3.0
    return R, s, c


# ---------------------------------------------------------------------------------------------
# Gaussians
# ---------------------------------------------------------------------------------------------


@dataclass
class LocalGaussians:
    """N Gaussians in their parent triangles' frames (what is fitted and stored in the bundle).

    ``parent_face`` (N,) long; ``local_position`` (N, 3) in triangle-size units; ``local_rotation``
    (N, 4) wxyz (any norm); ``log_scale`` (N, 3) log of scale relative to the triangle size;
    ``opacity_logit`` (N,); ``sh`` (N, K, 3), K = (degree + 1)^2, DC first.
    """

    parent_face: torch.Tensor
    local_position: torch.Tensor
    local_rotation: torch.Tensor
    log_scale: torch.Tensor
    opacity_logit: torch.Tensor
    sh: torch.Tensor

    def __len__(self) -> int:
        return int(self.parent_face.shape[0])

    @property
    def sh_degree(self) -> int:
        return int(round(self.sh.shape[1] ** 0.5)) - 1

    def _map(self, fn) -> "LocalGaussians":
        return LocalGaussians(**{f.name: fn(f.name, getattr(self, f.name)) for f in fields(self)})

    def to(self, device=None, dtype: torch.dtype | None = None) -> "LocalGaussians":
        """Move to ``device``; float fields to ``dtype`` (``parent_face`` stays long)."""
        return self._map(lambda n, t: t.to(device=device) if n == "parent_face" else t.to(device=device, dtype=dtype))

    def detach(self) -> "LocalGaussians":
        return self._map(lambda n, t: t.detach())

    def select(self, index: torch.Tensor) -> "LocalGaussians":
        """The Gaussians at ``index`` (bool mask or indices), e.g. for pruning or cloning."""
        return self._map(lambda n, t: t[index])

    @staticmethod
    def cat(parts: "list[LocalGaussians]") -> "LocalGaussians":
        return LocalGaussians(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(LocalGaussians)})

    @staticmethod
    def one_per_face(num_faces: int, *, sh_degree: int = 0, opacity: float = 0.1, rgb: float = 0.5,
                     dtype: torch.dtype = torch.float32, device=None) -> "LocalGaussians":
        """GaussianAvatars' start: one Gaussian at each centroid, identity rotation, scale = the
        triangle size (log_scale 0), uniform opacity and grey colour."""
        n = int(num_faces)
        kw = {"dtype": dtype, "device": device}
        sh = torch.zeros(n, (sh_degree + 1) ** 2, 3, **kw)
        sh[:, 0] = (rgb - 0.5) / 0.28209479177387814
        return LocalGaussians(
            parent_face=torch.arange(n, device=device),
            local_position=torch.zeros(n, 3, **kw),
            local_rotation=torch.tensor([1.0, 0.0, 0.0, 0.0], **kw).repeat(n, 1),
            log_scale=torch.zeros(n, 3, **kw),
            opacity_logit=torch.full((n,), float(torch.logit(torch.tensor(opacity, dtype=torch.float64))), **kw),
            sh=sh,
        )


@dataclass
class WorldGaussians:
    """Gaussians in world space, ready for :func:`backend.render.gaussians.rasterize`.

    ``means`` (..., N, 3); ``quats`` (..., N, 4) unit wxyz; ``scales`` (..., N, 3) linear;
    ``opacities`` (..., N) in (0, 1); ``sh`` (N, K, 3) (shared by all frames). The leading ``...`` is
    (T,) when several frames were posed at once, empty for one.
    """

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    sh: torch.Tensor

    def frame(self, t: int) -> "WorldGaussians":
        """Frame ``t`` of a batched result."""
        if self.means.ndim == 2:
            raise ValueError("WorldGaussians.frame: not batched over frames")
        return WorldGaussians(self.means[t], self.quats[t], self.scales[t], self.opacities[t], self.sh)


def local_to_world(local: LocalGaussians, vertices: torch.Tensor, faces: torch.Tensor,
                   detail_offsets: torch.Tensor | None = None) -> WorldGaussians:
    """Pose local Gaussians on ``vertices`` (T, V, 3) or (V, 3); batched over frames.

    ``detail_offsets`` (T, N, 3) (or (N, 3) for one frame) are added to the local positions, in
    triangle units, before the transform (the per-frame fine detail the U-Net predicts).
    """
    single = vertices.ndim == 2
    verts = vertices[None] if single else vertices
    pf = local.parent_face.to(verts.device).long()
    R, s, c = face_frames(verts, faces)
    q_face = matrix_to_quat(torch.index_select(R, 1, pf))  # (T, N, 4)
    R_g = torch.index_select(R, 1, pf)
    s_g = torch.index_select(s, 1, pf)[..., None]  # (T, N, 1)
    c_g = torch.index_select(c, 1, pf)
    xyz = local.local_position[None]
    if detail_offsets is not None:
        xyz = xyz + (detail_offsets[None] if detail_offsets.ndim == 2 else detail_offsets)
    means = s_g * (R_g @ xyz[..., None])[..., 0] + c_g
    quats = F.normalize(quat_multiply(q_face, F.normalize(local.local_rotation, dim=-1, eps=_EPS)[None]),
                        dim=-1, eps=_EPS)
    scales = torch.exp(local.log_scale)[None] * s_g
    opacities = torch.sigmoid(local.opacity_logit)[None].expand(means.shape[0], -1)
    if single:
        return WorldGaussians(means[0], quats[0], scales[0], opacities[0], local.sh)
    return WorldGaussians(means, quats, scales, opacities, local.sh)


def world_to_local(world: WorldGaussians, parent_face: torch.Tensor, vertices: torch.Tensor,
                   faces: torch.Tensor) -> LocalGaussians:
    """Inverse of :func:`local_to_world` for one frame: ``world`` (N, ...) on ``vertices`` (V, 3)."""
    if world.means.ndim != 2 or vertices.ndim != 2:
        raise ValueError("world_to_local: expects one frame (means (N, 3), vertices (V, 3))")
    pf = torch.as_tensor(parent_face, device=vertices.device).long()
    R, s, c = face_frames(vertices, faces)
    R_g, s_g, c_g = R[pf], s[pf][:, None], c[pf]
    local_pos = (R_g.transpose(-1, -2) @ (world.means - c_g)[..., None])[..., 0] / s_g
    q_local = quat_multiply(quat_conjugate(matrix_to_quat(R_g)), F.normalize(world.quats, dim=-1, eps=_EPS))
    op = world.opacities.clamp(1e-6, 1.0 - 1e-6)
    return LocalGaussians(
        parent_face=pf,
        local_position=local_pos,
        local_rotation=F.normalize(q_local, dim=-1, eps=_EPS),
        log_scale=torch.log(world.scales / s_g),
        opacity_logit=torch.log(op) - torch.log1p(-op),
        sh=world.sh,
    )


def local_from_points(points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor, *,
                      scale: float | torch.Tensor, opacity: float = 0.1, sh_degree: int = 0,
                      rgb: torch.Tensor | None = None) -> LocalGaussians:
    """Isotropic Gaussians at world ``points`` (P, 3), each bound to its nearest triangle of
    ``vertices`` (V, 3): how keypoints triangulated across views join the avatar."""
    P = points.shape[0]
    kw = {"dtype": points.dtype, "device": points.device}
    sh = torch.zeros(P, (sh_degree + 1) ** 2, 3, **kw)
    sh[:, 0] = ((rgb if rgb is not None else torch.full((P, 3), 0.5, **kw)) - 0.5) / 0.28209479177387814
    world = WorldGaussians(
        means=points,
        quats=torch.tensor([1.0, 0.0, 0.0, 0.0], **kw).repeat(P, 1),
        scales=torch.as_tensor(scale, **kw).reshape(-1, 1).expand(P, 3),
        opacities=torch.full((P,), float(opacity), **kw),
        sh=sh,
    )
    return world_to_local(world, nearest_faces(points, vertices, faces), vertices, faces)


# ---------------------------------------------------------------------------------------------
# Nearest triangle
# ---------------------------------------------------------------------------------------------


def _sq_dist_to_triangles(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distance from points ``p`` to triangles (a, b, c), all (M, 3): the distance to the
    plane when the foot of the perpendicular is inside the triangle, else to the nearest edge."""
    n = torch.linalg.cross(b - a, c - a)
    nn = (n * n).sum(-1)
    inside = nn > 1e-30
    for u, v in ((a, b), (b, c), (c, a)):
        inside &= (torch.linalg.cross(v - u, p - u) * n).sum(-1) >= 0
    plane = ((p - a) * n).sum(-1) ** 2 / nn.clamp_min(1e-30)

    def seg(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        d = v - u
        t = (((p - u) * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-30)).clamp(0.0, 1.0)
        return ((p - u - t[:, None] * d) ** 2).sum(-1)

    edges = torch.minimum(torch.minimum(seg(a, b), seg(b, c)), seg(c, a))
    return torch.where(inside, torch.minimum(plane, edges), edges)


@torch.no_grad()
def nearest_faces(points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor, *,
                  return_distance: bool = False, chunk: int = 1 << 22):
    """Index (P,) of the triangle nearest to each of ``points`` (P, 3) (ties: lowest index).

    Exact point-to-triangle distances, but only for candidate triangles: with r_f the radius of
    triangle f around its centroid c_f, |p - c_f| - r_f <= d(p, f) <= |p - c_f|, so only faces
    with |p - c_f| - r_f <= min_f |p - c_f| can win. Float64, chunked over points.
    """
    dev = points.device
    faces = _faces(faces, dev)
    P = points.shape[0]
    p64, v64 = points.double(), vertices.double()
    tri = v64[faces]  # (F, 3, 3)
    cen = tri.mean(1)
    rad = (tri - cen[:, None]).norm(dim=-1).amax(1)
    best = torch.empty(P, dtype=torch.long, device=dev)
    dist = torch.empty(P, dtype=torch.float64, device=dev)
    step = max(1, chunk // max(1, faces.shape[0]))
    for lo in range(0, P, step):
        pts = p64[lo:lo + step]
        dc = torch.cdist(pts, cen)  # (p, F)
        cand = torch.nonzero(dc - rad[None] <= dc.amin(1, keepdim=True) * (1 + 1e-9) + 1e-12)
        pi, fi = cand[:, 0], cand[:, 1]
        d2 = _sq_dist_to_triangles(pts[pi], tri[fi, 0], tri[fi, 1], tri[fi, 2])
        n = pts.shape[0]
        dmin = torch.full((n,), float("inf"), dtype=torch.float64, device=dev).scatter_reduce(0, pi, d2, "amin")
        win = d2 <= dmin[pi]
        fbest = torch.full((n,), faces.shape[0], dtype=torch.long, device=dev)
        best[lo:lo + n] = fbest.scatter_reduce(0, pi[win], fi[win], "amin")
        dist[lo:lo + n] = dmin.sqrt()
    return (best, dist.to(points.dtype)) if return_distance else best
