"""A batched torch triangle rasterizer with a z-buffer, for B = views x frames images.

Conventions (``backend/cameras.py``): OpenCV cameras (``world_to_cam`` 4x4, +x right, +y down,
+z forward), intrinsics ``K`` in pixels, **pixel centres at integer coordinates** (pixel (row i,
col j) is sampled at u = j, v = i). A pixel is covered by a triangle when its centre lies inside
or on the edge of the projected triangle.

Algorithm (CPU friendly, memory bounded):

1. project the vertices, drop faces with a vertex closer than ``near`` (no clipping: meshes must
   lie in front of the camera), degenerate faces and, with ``cull_backfaces``, back faces;
2. per face, the pixel-centre bounding box; candidates (face, pixel) enumerated in chunks of at
   most ``chunk_size``; edge functions e_ab(p) = (a - p) x (b - p) (exactly antisymmetric on
   shared edges, so a closed mesh has no cracks) decide coverage and give screen-space
   barycentrics, from which the camera depth z = 1 / sum(w_i / z_i);
3. z-buffer: ``scatter_reduce(amin)`` of an int64 key (float32 depth bits << face bits | face id)
   per pixel: nearest face wins, ties go to the lower face id;
4. for the winning faces only, barycentrics and depth are recomputed with differentiable torch ops
   from the vertex positions, so gradients flow to vertices (and to attributes through
   :func:`interpolate`). Face selection itself is not differentiable (hard rasterizer).

Winding: faces are counter-clockwise seen from outside. A front-facing triangle has outward
normal towards the camera; in image coordinates (+v down) its signed area
(b - a) x (c - a) is **negative**, which is what culling keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MVP4DError

__all__ = ["Fragments", "project_points", "rasterize", "interpolate"]

_INT64_MAX = torch.iinfo(torch.int64).max


@dataclass
class Fragments:
    """Per-pixel rasterization result for B images of H x W.

    ``face_id`` (B, H, W) int64: visible face, -1 on background. ``bary`` (B, H, W, 3): barycentric
    weights of the face's 3 vertices (perspective-correct if asked), zeros on background.
    ``depth`` (B, H, W): camera-space z of the surface at the pixel centre, **0 on background**.
    """

    face_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """(B, H, W) bool, True where a face covers the pixel."""
        return self.face_id >= 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.face_id.shape)  # type: ignore[return-value]


def _check_batch(vertices: torch.Tensor, world_to_cam: torch.Tensor, K: torch.Tensor) -> None:
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise MVP4DError("BAD_INPUT", f"vertices must be (B, V, 3), got {tuple(vertices.shape)}")
    B = vertices.shape[0]
    if tuple(world_to_cam.shape) != (B, 4, 4):
        raise MVP4DError("BAD_INPUT", f"world_to_cam must be ({B}, 4, 4), got {tuple(world_to_cam.shape)}")
    if tuple(K.shape) != (B, 3, 3):
        raise MVP4DError("BAD_INPUT", f"K must be ({B}, 3, 3), got {tuple(K.shape)}")


def project_points(vertices: torch.Tensor, world_to_cam: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """World points (B, V, 3) -> (B, V, 3) holding (u, v, z_cam) in pixels / camera units."""
    _check_batch(vertices, world_to_cam, K)
    w2c = world_to_cam.to(vertices)
    K = K.to(vertices)
    cam = vertices @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]
    q = cam @ K.transpose(1, 2)
    z = cam[..., 2]
    uv = q[..., :2] / q[..., 2:3]
    return torch.cat([uv, z[..., None]], dim=-1)


def _edge(ax, ay, bx, by, px, py):
    """Edge function (a - p) x (b - p); exactly antisymmetric in (a, b)."""
    return (ax - px) * (by - py) - (ay - py) * (bx - px)


def rasterize(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    world_to_cam: torch.Tensor,
    K: torch.Tensor,
    height: int,
    width: int,
    *,
    cull_backfaces: bool = True,
    perspective_correct: bool = True,
    near: float = 1e-3,
    chunk_size: int = 1 << 20,
) -> Fragments:
    """Rasterize a mesh seen by B cameras (B = views x frames).

    ``vertices`` (B, V, 3) in world; ``faces`` (F, 3) long (shared by the batch); ``world_to_cam``
    (B, 4, 4); ``K`` (B, 3, 3). See the module docstring for conventions and algorithm.
    """
    H, W = int(height), int(width)
    _check_batch(vertices, world_to_cam, K)
    faces = torch.as_tensor(faces, device=vertices.device).long()
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise MVP4DError("BAD_INPUT", f"faces must be (F, 3), got {tuple(faces.shape)}")
    B, V = vertices.shape[:2]
    F = faces.shape[0]
    if F and (int(faces.min()) < 0 or int(faces.max()) >= V):
        raise MVP4DError("BAD_INPUT", f"faces index vertices outside 0..{V - 1}")
    device = vertices.device

    proj = project_points(vertices, world_to_cam, K)  # (B, V, 3), differentiable
    fbits = max(1, int(F).bit_length())
    zbuf = torch.full((B * H * W,), _INT64_MAX, dtype=torch.int64, device=device)
    if F and H > 0 and W > 0:
        # images in groups so that per-face work stays bounded (~2M image-face pairs at a time)
        step = max(1, (1 << 21) // F)
        with torch.no_grad():
            for b0 in range(0, B, step):
                tri = proj.detach()[b0 : b0 + step, faces]  # (b, F, 3, 3)
                _rasterize_group(zbuf, tri, b0, F, H, W, fbits, cull_backfaces, near, chunk_size)
    hit = zbuf != _INT64_MAX
    face_id = torch.where(hit, zbuf & ((1 << fbits) - 1), torch.full_like(zbuf, -1))
    del zbuf, hit
    face_id = face_id.view(B, H, W)
    bary, depth = _barycentrics(proj, faces, face_id, perspective_correct)
    return Fragments(face_id=face_id, bary=bary, depth=depth)


def _rasterize_group(zbuf, tri, b0, F, H, W, fbits, cull_backfaces, near, chunk_size):
    """Z-buffer the faces of images b0 .. b0 + len(tri) - 1 into ``zbuf`` (B*H*W,) (no grad).

    ``tri`` (b, F, 3, 3): (u, v, z) of each face's vertices. The key per pixel is
    (float32 depth bits << fbits) | face id; ``amin`` keeps the nearest face.
    """
    b = tri.shape[0]
    u, v, z = tri[..., 0], tri[..., 1], tri[..., 2]
    area2 = (u[..., 1] - u[..., 0]) * (v[..., 2] - v[..., 0]) - (v[..., 1] - v[..., 0]) * (u[..., 2] - u[..., 0])
    valid = (z > near).all(-1) & torch.isfinite(area2) & (area2 != 0)
    if cull_backfaces:
        valid &= area2 < 0
    x0 = torch.ceil(u.amin(-1)).clamp(min=0)
    x1 = torch.floor(u.amax(-1)).clamp(max=W - 1)
    y0 = torch.ceil(v.amin(-1)).clamp(min=0)
    y1 = torch.floor(v.amax(-1)).clamp(max=H - 1)
    valid &= (x1 >= x0) & (y1 >= y0)
    flat = valid.reshape(-1).nonzero().squeeze(1)
    if flat.numel() == 0:
        return
    per = tri.reshape(b * F, 3, 3).index_select(0, flat)  # (P, 3, 3)
    box = torch.stack([x0, x1, y0, y1], -1).reshape(b * F, 4).index_select(0, flat).long()
    bi = torch.div(flat, F, rounding_mode="floor") + b0
    _scatter_candidates(zbuf, bi, flat % F, per, box, fbits, H, W, chunk_size)


def _scatter_candidates(zbuf, bi, fi, per, box, fbits, H, W, chunk_size):
    """Enumerate (pair, pixel) candidates in chunks; scatter the keys of covered ones into ``zbuf``.

    ``per`` (P, 3, 3): (u, v, z) of the 3 vertices of each (image ``bi``, face ``fi``) pair;
    ``box`` (P, 4): its pixel box x0, x1, y0, y1 (inclusive).
    """
    device = per.device
    u, v, z = per[..., 0], per[..., 1], per[..., 2]
    x0, y0 = box[:, 0], box[:, 2]
    bw = box[:, 1] - x0 + 1
    n = bw * (box[:, 3] - y0 + 1)  # candidates per pair
    ends = torch.cumsum(n, 0)
    starts = ends - n
    sign = torch.sign((u[:, 1] - u[:, 0]) * (v[:, 2] - v[:, 0]) - (v[:, 1] - v[:, 0]) * (u[:, 2] - u[:, 0]))
    # per pair: u0 v0 u1 v1 u2 v2 1/z0 1/z1 1/z2 sign, gathered per candidate in one index_select
    pack = torch.cat([per[..., :2].reshape(-1, 6), 1.0 / z, sign[:, None]], 1)
    base = (bi * (H * W) + y0 * W + x0)  # flat pixel index of each pair's box corner
    P = n.numel()
    p = 0
    while p < P:
        # pairs p..q-1 hold at most chunk_size candidates (or a single larger pair)
        q = int(torch.searchsorted(ends, int(starts[p]) + chunk_size, right=True))
        q = min(max(q, p + 1), P)
        cnt = n[p:q]
        m = int(ends[q - 1] - starts[p])
        rep = torch.repeat_interleave(torch.arange(p, q, device=device), cnt)
        local = torch.arange(m, device=device) - (starts.index_select(0, rep) - starts[p])
        w_r = bw.index_select(0, rep)
        dy = torch.div(local, w_r, rounding_mode="floor")
        dx = local - dy * w_r
        c = pack.index_select(0, rep)
        px = (x0.index_select(0, rep) + dx).to(per.dtype)
        py = (y0.index_select(0, rep) + dy).to(per.dtype)
        e0 = _edge(c[:, 2], c[:, 3], c[:, 4], c[:, 5], px, py)  # opposite vertex 0
        e1 = _edge(c[:, 4], c[:, 5], c[:, 0], c[:, 1], px, py)  # opposite vertex 1
        e2 = _edge(c[:, 0], c[:, 1], c[:, 2], c[:, 3], px, py)  # opposite vertex 2
        s = c[:, 9]
        inside = (e0 * s >= 0) & (e1 * s >= 0) & (e2 * s >= 0)
        idx = inside.nonzero().squeeze(1)
        if idx.numel():
            e0, e1, e2, c = e0[idx], e1[idx], e2[idx], c[idx]
            depth = (e0 + e1 + e2) / (e0 * c[:, 6] + e1 * c[:, 7] + e2 * c[:, 8])
            zbits = depth.to(torch.float32).clamp(min=0).view(torch.int32).to(torch.int64)
            r = rep[idx]
            key = (zbits << fbits) | fi.index_select(0, r)
            pix = base.index_select(0, r) + dy[idx] * W + dx[idx]
            zbuf.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)
        p = q


def _barycentrics(proj: torch.Tensor, faces: torch.Tensor, face_id: torch.Tensor, perspective_correct: bool):
    """Differentiable barycentrics and depth at the pixel centres of the winning faces."""
    B, H, W = face_id.shape
    dtype = proj.dtype
    bary = torch.zeros(B, H, W, 3, dtype=dtype, device=proj.device)
    depth = torch.zeros(B, H, W, dtype=dtype, device=proj.device)
    b, y, x = (face_id >= 0).nonzero(as_tuple=True)
    if b.numel() == 0:
        return bary, depth
    B_, V = proj.shape[:2]
    fid = face_id.reshape(-1).index_select(0, (b * H + y) * W + x)
    vid = faces.index_select(0, fid) + (b * V)[:, None]  # (N, 3) rows of proj flattened
    tri = proj.reshape(B_ * V, 3).index_select(0, vid.reshape(-1)).view(-1, 3, 3)  # (N, 3, 3)
    u, v, z = tri[..., 0], tri[..., 1], tri[..., 2]
    px, py = x.to(dtype), y.to(dtype)
    e0 = _edge(u[:, 1], v[:, 1], u[:, 2], v[:, 2], px, py)
    e1 = _edge(u[:, 2], v[:, 2], u[:, 0], v[:, 0], px, py)
    e2 = _edge(u[:, 0], v[:, 0], u[:, 1], v[:, 1], px, py)
    w = torch.stack([e0, e1, e2], -1)
    w = w / w.sum(-1, keepdim=True)  # screen-space barycentrics
    wz = w / z
    sz = wz.sum(-1, keepdim=True)
    d = 1.0 / sz[:, 0]
    if perspective_correct:
        w = wz / sz
    bary = bary.index_put((b, y, x), w)
    depth = depth.index_put((b, y, x), d)
    return bary, depth


def interpolate(fragments: Fragments, faces: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
    """Interpolate per-vertex ``attributes`` (B, V, C) or (V, C) -> (B, H, W, C), zeros on background."""
    face_id, bary = fragments.face_id, fragments.bary
    B, H, W = face_id.shape
    faces = torch.as_tensor(faces, device=face_id.device).long()
    if not (attributes.ndim == 2 or (attributes.ndim == 3 and attributes.shape[0] == B)):
        raise MVP4DError("BAD_INPUT", f"attributes must be (V, C) or ({B}, V, C), got {tuple(attributes.shape)}")
    C = attributes.shape[-1]
    out_dtype = torch.promote_types(attributes.dtype, bary.dtype)
    out = torch.zeros(B, H, W, C, dtype=out_dtype, device=attributes.device)
    pix = (face_id.reshape(-1) >= 0).nonzero().squeeze(1)
    if pix.numel() == 0:
        return out
    V = attributes.shape[-2]
    vid = faces.index_select(0, face_id.reshape(-1).index_select(0, pix))  # (N, 3)
    w = bary.reshape(-1, 3).index_select(0, pix).to(out_dtype)  # (N, 3)
    if attributes.ndim == 2:
        flat_attr, rows = attributes, vid
    else:
        flat_attr = attributes.reshape(B * V, C)
        rows = vid + (torch.div(pix, H * W, rounding_mode="floor") * V)[:, None]
    vals = w[:, 0:1] * flat_attr.index_select(0, rows[:, 0]).to(out_dtype)
    for k in (1, 2):
        vals = vals + w[:, k : k + 1] * flat_attr.index_select(0, rows[:, k]).to(out_dtype)
    return out.view(B * H * W, C).index_copy(0, pix, vals).view(B, H, W, C)
