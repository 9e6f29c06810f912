"""The weights-free projection generator: the photo projected onto the fitted, animated FLAME head.

Deterministic, geometrically consistent and runs on a CPU in seconds, it is the artists' quick
preview and the ground truth that tests the fitting stage (docs/design.md, "The embedded default").

How a pixel of view *v*, frame *t* gets its colour:

1. rasterize the head posed for frame *t* from camera *v* → the triangle and barycentrics under the
   pixel. The same (triangle, barycentrics) names the same point of skin in every pose, so
2. that point is placed on the head as posed in the *reference* photo and projected into the reference
   camera; if it is visible there (depth test against the reference z-buffer, facing the camera) the
   photo is sampled bilinearly;
3. where the photo did not see the skin (back of the head, under the chin, grazing angles) a smooth
   fill is used instead: per-vertex colours sampled from the photo where visible and extended over the
   rest of the mesh by harmonic interpolation (Laplace equation on the mesh graph) — never black holes.
   The two blend by a visibility weight, so there are no seams at grazing angles.

Background is white, like the matted reference (paper S2.1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
import torch.nn.functional as F

from ..cameras import Camera, stack_K, stack_world_to_cam
from ..render.raster import Fragments, interpolate, project_points, rasterize

MAX_TEXTURE_SIDE = 1024  # the reference photo is downscaled to this for projection (memory, speed)
DEPTH_TOLERANCE = 0.004  # metres: a point is visible in the photo if within this of the z-buffer
COS_START, COS_FULL = 0.05, 0.35  # facing weight ramps from 0 at COS_START to 1 at COS_FULL
FRAMES_PER_BATCH = 8


def _face_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    v0, v1, v2 = (vertices[..., faces[:, i], :] for i in range(3))
    n = torch.cross(v1 - v0, v2 - v0, dim=-1)
    return F.normalize(n, dim=-1)


def _vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1)  # area-weighted
    vn = torch.zeros_like(vertices)
    for i in range(3):
        vn.index_add_(0, faces[:, i], fn)
    return F.normalize(vn, dim=-1)


def _facing_weight(cos: torch.Tensor) -> torch.Tensor:
    return ((cos - COS_START) / (COS_FULL - COS_START)).clamp(0.0, 1.0)


def _sample(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of ``image (C,H,W)`` at pixel coords ``uv (...,2)`` (integer pixel centres)."""
    c, h, w = image.shape
    grid = torch.stack([uv[..., 0] / (w - 1) * 2 - 1, uv[..., 1] / (h - 1) * 2 - 1], dim=-1)
    flat = grid.reshape(1, 1, -1, 2)
    out = F.grid_sample(image[None], flat, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0, :, 0].T.reshape(*uv.shape[:-1], c)


def harmonic_fill(num_vertices: int, faces: np.ndarray, known: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Extend ``values`` (K, C) given at vertex indices ``known`` to all vertices smoothly.

    Solves the graph Laplace equation with the known vertices as boundary conditions; a tiny pull
    towards the mean colour keeps components that touch no known vertex defined (no black holes).
    """
    out = np.zeros((num_vertices, values.shape[1]), np.float64)
    if len(known) == 0:
        out[:] = 1.0  # nothing seen at all: white, like the background
        return out.astype(np.float32)
    mean = values.mean(0)
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(num_vertices,) * 2).tocsr()
    adj = ((adj + adj.T) > 0).astype(np.float64)
    lap = sp.diags(np.asarray(adj.sum(1)).ravel()) - adj
    is_known = np.zeros(num_vertices, bool)
    is_known[known] = True
    unknown = np.flatnonzero(~is_known)
    out[known] = values
    if len(unknown):
        eps = 1e-4
        a = lap[unknown][:, unknown] + eps * sp.identity(len(unknown))
        b = -lap[unknown][:, known] @ values + eps * mean[None]
        out[unknown] = np.column_stack([spla.spsolve(a.tocsc(), b[:, c]) for c in range(values.shape[1])])
    return out.astype(np.float32)


class ProjectionGenerator:
    """Renders the reference photo projected on the animated head, from any camera and frame.

    Args:
        faces: (F, 3) triangles of the head model.
        reference_vertices: (V, 3) vertices posed as in the photo (world = FLAME space).
        reference_camera: the tracked camera of the photo (full image).
        reference_image: the matted photo, uint8 (H, W, 3), white background.
    """

    name = "projection"

    def __init__(
        self, faces: np.ndarray | torch.Tensor, reference_vertices: torch.Tensor,
        reference_camera: Camera, reference_image: np.ndarray,
    ):
        h, w = reference_image.shape[:2]
        scale = min(1.0, MAX_TEXTURE_SIDE / max(h, w))
        if scale < 1.0:
            import cv2

            w2, h2 = max(8, round(w * scale)), max(8, round(h * scale))
            reference_image = cv2.resize(reference_image, (w2, h2), interpolation=cv2.INTER_AREA)
            reference_camera = reference_camera.scaled(w2, h2)
        self.faces = torch.as_tensor(np.asarray(faces), dtype=torch.long)
        self.ref_vertices = reference_vertices.detach().to(torch.float32).reshape(-1, 3)
        self.ref_camera = reference_camera
        self.ref_image = torch.from_numpy(np.array(reference_image, copy=True)).permute(2, 0, 1).float() / 255.0
        self._K = stack_K([reference_camera])
        self._w2c = stack_world_to_cam([reference_camera])
        ref_frag = rasterize(self.ref_vertices[None], self.faces, self._w2c, self._K,
                             reference_camera.height, reference_camera.width)
        depth = ref_frag.depth[0].clone()
        depth[~ref_frag.mask[0]] = float("inf")
        self.ref_depth = depth
        self.ref_face_normals = _face_normals(self.ref_vertices, self.faces)
        self.vertex_fill = torch.from_numpy(self._vertex_fill())

    # ------------------------------------------------------------------------------------------
    def _visibility(self, points: torch.Tensor, normals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight in [0, 1] that reference-posed ``points (...,3)`` are seen by the photo, and their uv."""
        shape = points.shape[:-1]
        uvz = project_points(points.reshape(1, -1, 3), self._w2c, self._K)[0]
        uv, z = uvz[:, :2], uvz[:, 2]
        h, w = self.ref_depth.shape
        inside = (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1) & (z > 0)
        ui = uv[:, 0].round().long().clamp(0, w - 1)
        vi = uv[:, 1].round().long().clamp(0, h - 1)
        zbuf = self.ref_depth[vi, ui]
        visible = inside & (z <= zbuf + DEPTH_TOLERANCE)
        center = torch.as_tensor(self.ref_camera.center, dtype=points.dtype)
        to_cam = F.normalize(center - points.reshape(-1, 3), dim=-1)
        cos = (normals.reshape(-1, 3) * to_cam).sum(-1)
        weight = visible.float() * _facing_weight(cos)
        return weight.reshape(shape), uv.reshape(*shape, 2)

    def _vertex_fill(self) -> np.ndarray:
        vn = _vertex_normals(self.ref_vertices, self.faces)
        weight, uv = self._visibility(self.ref_vertices, vn)
        known = torch.nonzero(weight > 0.5).ravel()
        colours = _sample(self.ref_image, uv[known])
        return harmonic_fill(len(self.ref_vertices), self.faces.numpy(), known.numpy(), colours.numpy())

    # ------------------------------------------------------------------------------------------
    def _shade(self, frags: Fragments) -> torch.Tensor:
        """Colour (B,H,W,3) in [0,1] for rasterized fragments of any pose (white background)."""
        fid = frags.face_id.clamp(min=0)
        tri = self.faces[fid]  # (B,H,W,3)
        pts = (frags.bary[..., None] * self.ref_vertices[tri]).sum(-2)  # reference-posed surface point
        weight, uv = self._visibility(pts, self.ref_face_normals[fid])
        projected = _sample(self.ref_image, uv)
        fill = interpolate(frags, self.faces, self.vertex_fill)
        colour = weight[..., None] * projected + (1 - weight[..., None]) * fill
        return torch.where(frags.mask[..., None], colour, torch.ones_like(colour))

    @torch.no_grad()
    def render(
        self, vertices: torch.Tensor, camera: Camera, check: Callable[[], None] | None = None,
    ) -> np.ndarray:
        """Frames of one view: ``vertices (T,V,3)`` posed per frame → uint8 (T, H, W, 3)."""
        vertices = vertices.detach().to(torch.float32)
        out = np.empty((len(vertices), camera.height, camera.width, 3), np.uint8)
        K, w2c = stack_K([camera]), stack_world_to_cam([camera])
        for s in range(0, len(vertices), FRAMES_PER_BATCH):
            if check is not None:
                check()
            v = vertices[s : s + FRAMES_PER_BATCH]
            b = len(v)
            frags = rasterize(v, self.faces, w2c.expand(b, 4, 4), K.expand(b, 3, 3), camera.height, camera.width)
            rgb = self._shade(frags)
            out[s : s + b] = (rgb * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
        return out
