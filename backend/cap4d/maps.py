"""CAP4D's conditioning maps (50 channels per latent pixel), built from the checkpoint's own geometry.

========  =====================================================================================
channels  content
========  =====================================================================================
0-41      the checkpoint's ``props`` (normalised canonical template position, FLAME + mouth) of the
          visible surface, per axis x, y, z: sin(2^k p) for k = 0..6, then cos(2^k p)
42-44     expression offset (posed in the canonical head frame minus the neutral mesh) / 0.0104 m
45-47     unit ray directions in the reference camera's axes
48        reference mask (1 for references)
49        crop mask (1 where the crop shows the photo; all ones for generated views)
========  =====================================================================================

The mesh is FLAME's 5,023 vertices plus the 200 mouth vertices (:mod:`backend.cap4d.mouth`) with the
checkpoint's ``faces``; it is rasterised at twice the latent resolution in crop coordinates with
back-face culling and screen-space barycentrics, only faces in the checkpoint's ``face_mask`` (head
and mouth) count, the pose encoding is taken per pixel and multiplied by the mask, and everything is
area-downsampled 2×. Rays are computed at latent resolution with intrinsics scaled by h / H and
integer latent pixel coordinates (no half-pixel shift), as the model was trained.

This differs from :mod:`backend.conditioning.maps` (the MMVDM's): other channel order, and CAP4D's
template normalisation (centred, divided by the *signed* maximum) comes with the checkpoint's props,
so nothing here recomputes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as Fn

from ..cameras import Camera
from ..conditioning.maps import EXPRESSION_SCALE, pose_encoding
from ..errors import MVP4DError
from ..flame import Flame, FlameParams
from ..flame.lbs import axis_angle_to_matrix
from ..render.raster import interpolate, rasterize
from .mouth import FLAME_VERTICES, JAW_JOINT, MOUTH_VERTICES, mouth_vertices

__all__ = ["CAP4DGeometry", "posed_head", "conditioning_maps", "ray_directions", "REF_CHANNEL", "CROP_CHANNEL"]

REF_CHANNEL = 48
CROP_CHANNEL = 49
_RENDER_FACTOR = 2


@dataclass
class CAP4DGeometry:
    """The checkpoint's template: ``props`` (P, 3), ``faces`` (F, 3), ``face_mask`` (F,) bool."""

    props: torch.Tensor
    faces: torch.Tensor
    face_mask: torch.Tensor

    @classmethod
    def from_tensors(cls, geom: dict[str, torch.Tensor]) -> "CAP4DGeometry":
        g = cls(geom["props"].float(), geom["faces"].long(), geom["face_mask"].bool())
        if g.props.shape[0] != FLAME_VERTICES + MOUTH_VERTICES:
            raise MVP4DError("WEIGHTS_MISMATCH", f"the checkpoint's props have {g.props.shape[0]} vertices, CAP4D's "
                             f"template has {FLAME_VERTICES} + {MOUTH_VERTICES}")
        if int(g.faces.max()) >= g.props.shape[0] or int(g.faces.min()) < 0:
            raise MVP4DError("WEIGHTS_MISMATCH", "the checkpoint's faces index vertices outside its props")
        return g


def require_flame(flame: Flame) -> None:
    """``FLAME_REQUIRED`` unless ``flame`` has FLAME's 5,023 vertices (the toy head has not)."""
    if flame.num_vertices != FLAME_VERTICES:
        raise MVP4DError("FLAME_REQUIRED", f"the CAP4D generator works on FLAME's {FLAME_VERTICES} vertices; this "
                         f"head model has {flame.num_vertices} (the embedded toy head cannot be used)")


@torch.no_grad()
def posed_head(flame: Flame, params: FlameParams) -> tuple[torch.Tensor, torch.Tensor]:
    """World vertices and canonical expression offsets (T, 5223, 3) of FLAME + mouth for every frame."""
    require_flame(flame)
    params = params.to(device=flame.device)
    out = flame(params)
    canon = flame(replace(params, global_rot=torch.zeros_like(params.global_rot),
                          transl=torch.zeros_like(params.transl)))
    neutral = flame.neutral_vertices(params.shape)
    mouth = mouth_vertices(neutral, flame.J_regressor[JAW_JOINT] @ neutral)  # canonical, from the neutral mesh
    T = out.vertices.shape[0]
    R0 = axis_angle_to_matrix(params.global_rot.reshape(T, 3).to(neutral.dtype))
    j0_rest, j0_posed = canon.joints[:, 0], out.joints[:, 0]
    mouth_w = torch.einsum("tij,tvj->tvi", R0, mouth[None] - j0_rest[:, None]) + j0_posed[:, None]
    verts = torch.cat([out.vertices, mouth_w], dim=1).float()
    offsets = torch.cat([canon.vertices - neutral[None], torch.zeros_like(mouth_w)], dim=1).float()
    return verts, offsets


def ray_directions(camera: Camera, ref_camera: Camera, h: int, w: int) -> torch.Tensor:
    """(h, w, 3) unit rays of ``camera`` at integer latent pixels (intrinsics × h/H), reference axes."""
    s = np.array([w / camera.width, h / camera.height, 1.0])[:, None]
    K = camera.K * s
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1)
    d = d / (np.linalg.norm(d, axis=-1, keepdims=True) + 1e-8)
    d = d @ camera.R @ ref_camera.R.T  # camera -> world (R^T d), world -> reference (R_ref ·)
    return torch.from_numpy(d.astype(np.float32))


@torch.no_grad()
def conditioning_maps(geom: CAP4DGeometry, vertices: torch.Tensor, offsets: torch.Tensor,
                      cameras: Sequence[Camera], ref_camera: Camera, latent: int) -> torch.Tensor:
    """(B, latent, latent, 50) maps for B posed meshes (B, P, 3) each seen by its crop camera.

    The reference-mask channel is 0 and the crop-mask channel 1 (a generated view); the caller sets
    them for references.
    """
    B, device = vertices.shape[0], vertices.device
    if len(cameras) != B:
        raise MVP4DError("INTERNAL", f"{B} meshes but {len(cameras)} cameras")
    r = latent * _RENDER_FACTOR
    rc = [c.scaled(r, r) for c in cameras]
    w2c = torch.as_tensor(np.stack([c.world_to_cam for c in rc]), dtype=torch.float32, device=device)
    K = torch.as_tensor(np.stack([c.K for c in rc]), dtype=torch.float32, device=device)
    faces = geom.faces.to(device)
    frags = rasterize(vertices, faces, w2c, K, r, r, cull_backfaces=True, perspective_correct=False)
    attrs = torch.cat([geom.props.to(device).expand(B, -1, 3), offsets / EXPRESSION_SCALE], dim=-1)
    vals = interpolate(frags, faces, attrs)  # (B, r, r, 6)
    fid = frags.face_id
    mask = (fid >= 0) & geom.face_mask.to(device)[fid.clamp(min=0)]
    geo = torch.cat([pose_encoding(vals[..., :3]), vals[..., 3:]], dim=-1) * mask[..., None]
    geo = Fn.avg_pool2d(geo.permute(0, 3, 1, 2), _RENDER_FACTOR).permute(0, 2, 3, 1)  # (B, latent, latent, 45)
    rays = torch.stack([ray_directions(c, ref_camera, latent, latent) for c in cameras]).to(device)
    ref = torch.zeros(B, latent, latent, 1, device=device)
    return torch.cat([geo, rays, ref, torch.ones_like(ref)], dim=-1)
