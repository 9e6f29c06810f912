"""The conditioning maps the MMVDM sees (paper §3.2 and S2.1), at latent resolution.

One tensor per latent frame, ``(NUM_CHANNELS, h, w)`` with ``h = H / 8``, ``w = W / 8`` for an
``H x W`` crop camera; the channels are listed in :data:`CHANNELS` (name, start, stop, meaning):

=============== ======= ================================================================================
name            range   meaning
=============== ======= ================================================================================
pose_x          0-14    canonical x of the visible head surface: sin(2^k x), k = 0..6, then cos(2^k x)
pose_y          14-28   same for y
pose_z          28-42   same for z
expression      42-45   expression deformation (x, y, z) / 0.0104 m, canonical head frame
ray_direction   45-48   unit ray direction through each latent pixel centre, reference camera axes
ray_origin      48-51   camera centre minus reference camera centre, reference camera axes, metres
reference_mask  51-52   1 = clean reference / previously generated frame given as condition, 0 = generate
outcrop_mask    52-53   1 where the crop shows the original image, 0 in padding (all ones for generated)
motion_1        53-55   (du, dv) / H of each vertex from retained frame 4k to dropped frame 4k-3
motion_2        55-57   same for dropped frame 4k-2
motion_3        57-59   same for dropped frame 4k-1
=============== ======= ================================================================================

Geometry channels (pose, expression, motion)
    The posed FLAME mesh is rasterised at twice the latent resolution with back-face culling and
    screen-space (not perspective-correct) barycentrics, per-vertex attributes are interpolated,
    multiplied by a render mask (pixel covered by a face with at least one vertex in the model's
    ``head_vertex_mask``; every face when the model has none) and area-downsampled 2x. Background
    is exactly 0.

    * *Canonical coordinates*: the model's ``v_template`` (no identity, no expression) minus its
      mean, divided by the largest absolute coordinate (so in [-1, 1]); they are interpolated, then
      encoded per pixel with sin/cos at frequencies 2^0 .. 2^6 (no pi, as CAP4D).
    * *Expression deformation*: per vertex, the mesh posed by expression, jaw/neck/eye pose and
      correctives in the canonical head frame (``global_rot = 0``, ``transl = 0``) minus the
      shape-only neutral mesh, divided by :data:`EXPRESSION_SCALE`.
    * *Sub-frame motion* (paper S2.1): CogVideoX compresses output frames 4k-3 .. 4k into latent
      frame k >= 1 and the conditioning keeps frame 4k (frame 0 for k = 0). Each motion map holds,
      per vertex of the retained frame's mesh, the screen displacement (pixels of the H x W image
      divided by H) from its position in frame 4k to its position in a dropped frame. Zero for
      latent frame 0 and for the reference image.

Rays are computed directly at latent resolution (latent pixel centres, :meth:`Camera.rays`) and are
never masked. The reference camera is the crop camera of the reference image; its frame is the
frame of every ray map (rotation by its world->camera rotation; origins relative to its centre).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as Fn

from ..cameras import Camera
from ..errors import MVP4DError
from ..flame import Flame, FlameParams
from ..render.raster import interpolate, project_points, rasterize

__all__ = [
    "CHANNELS",
    "NUM_CHANNELS",
    "CHANNEL_SLICES",
    "EXPRESSION_SCALE",
    "POSE_FREQUENCIES",
    "LATENT_DOWNSAMPLE",
    "HeadGeometry",
    "head_geometry",
    "canonical_coordinates",
    "pose_encoding",
    "decode_pose",
    "ray_maps",
    "reference_conditioning",
    "video_conditioning",
    "latent_frame_indices",
    "visualize",
]

#: metres per unit of the expression deformation map (CAP4D's normalisation)
EXPRESSION_SCALE = 0.0104
#: number of sin/cos frequencies (2^0 .. 2^(n-1)) per canonical axis
POSE_FREQUENCIES = 7
#: VAE spatial downsampling (image pixels per latent pixel)
LATENT_DOWNSAMPLE = 8
#: geometry channels are rendered at this multiple of the latent resolution, then area-downsampled
RENDER_FACTOR = 2
#: CogVideoX temporal compression (output frames per latent frame after the first)
TEMPORAL_COMPRESSION = 4
#: motion values are clamped to this many image heights (vertices near the camera plane)
_MOTION_CLAMP = 4.0

_P = 2 * POSE_FREQUENCIES
#: (name, start, stop, description): the channel table, contiguous over 0 .. NUM_CHANNELS
CHANNELS: list[tuple[str, int, int, str]] = [
    ("pose_x", 0, _P, "canonical x: sin(2^k x) for k = 0..6, then cos(2^k x) for k = 0..6"),
    ("pose_y", _P, 2 * _P, "canonical y: sin(2^k y) for k = 0..6, then cos(2^k y) for k = 0..6"),
    ("pose_z", 2 * _P, 3 * _P, "canonical z: sin(2^k z) for k = 0..6, then cos(2^k z) for k = 0..6"),
    ("expression", 42, 45, "expression deformation (x, y, z) in the canonical head frame / 0.0104 m"),
    ("ray_direction", 45, 48, "unit ray direction at latent pixel centres, reference camera axes"),
    ("ray_origin", 48, 51, "camera centre - reference camera centre, reference camera axes, metres"),
    ("reference_mask", 51, 52, "1 = clean reference or previously generated frame given as condition, 0 = generate"),
    ("outcrop_mask", 52, 53, "1 where the crop shows the original image, 0 in padding (ones for generated views)"),
    ("motion_1", 53, 55, "(du, dv) / H from retained frame 4k to dropped frame 4k-3 (zeros for k = 0)"),
    ("motion_2", 55, 57, "(du, dv) / H from retained frame 4k to dropped frame 4k-2 (zeros for k = 0)"),
    ("motion_3", 57, 59, "(du, dv) / H from retained frame 4k to dropped frame 4k-1 (zeros for k = 0)"),
]
NUM_CHANNELS = CHANNELS[-1][2]
CHANNEL_SLICES: dict[str, slice] = {name: slice(a, b) for name, a, b, _ in CHANNELS}
_POSE = slice(0, 3 * _P)
_GEOM = 3 * _P + 3 + 6  # rendered channels: pose encoding, expression, motion


# ---------------------------------------------------------------------------------------------
# per-vertex quantities
# ---------------------------------------------------------------------------------------------


@dataclass
class HeadGeometry:
    """Posed geometry of T frames: world ``vertices (T, V, 3)`` and expression ``offsets (T, V, 3)``
    (metres, canonical head frame). Compute once with :func:`head_geometry` and pass to
    :func:`video_conditioning` for every view of the same animation."""

    vertices: torch.Tensor
    offsets: torch.Tensor

    @property
    def num_frames(self) -> int:
        return int(self.vertices.shape[0])


@torch.no_grad()
def head_geometry(flame: Flame, params: FlameParams) -> HeadGeometry:
    """Posed vertices and expression offsets (posed in the canonical frame minus shape-only)."""
    params = params.to(device=flame.device)
    verts = flame(params).vertices
    if bool((params.global_rot == 0).all()) and bool((params.transl == 0).all()):
        canon = verts
    else:
        canon = flame(replace(params, global_rot=torch.zeros_like(params.global_rot),
                              transl=torch.zeros_like(params.transl))).vertices
    neutral = flame.neutral_vertices(params.shape)
    return HeadGeometry(vertices=verts.float(), offsets=(canon - neutral[None]).float())


def canonical_coordinates(flame: Flame) -> torch.Tensor:
    """(V, 3) template vertices centred by their mean and divided by the global max abs value."""
    v = flame.v_template.float()
    c = v - v.mean(0, keepdim=True)
    return c / c.abs().max().clamp(min=1e-12)


def pose_encoding(coords: torch.Tensor) -> torch.Tensor:
    """(..., 3) canonical coordinates -> (..., 42): per axis [sin(2^k c) k=0..6, cos(2^k c) k=0..6]."""
    freqs = 2.0 ** torch.arange(POSE_FREQUENCIES, dtype=coords.dtype, device=coords.device)
    x = coords[..., None] * freqs  # (..., 3, 7)
    return torch.cat([torch.sin(x), torch.cos(x)], dim=-1).flatten(-2)


def decode_pose(cond: torch.Tensor) -> torch.Tensor:
    """Canonical coordinates (3, h, w) from a conditioning tensor (C, h, w), via the 2^0 sin/cos
    pair of each axis (exact where the pixel is fully covered; 0 on background)."""
    s = torch.stack([cond[CHANNEL_SLICES[f"pose_{a}"].start] for a in "xyz"])
    c = torch.stack([cond[CHANNEL_SLICES[f"pose_{a}"].start + POSE_FREQUENCIES] for a in "xyz"])
    return torch.atan2(s, c) * ((s != 0) | (c != 0))


_HEAD_FACES: "weakref.WeakKeyDictionary[Flame, torch.Tensor]" = weakref.WeakKeyDictionary()


def _head_faces(flame: Flame) -> torch.Tensor:
    """(F,) bool: faces with at least one vertex in the head mask (all faces without a mask)."""
    cached = _HEAD_FACES.get(flame)
    if cached is not None and cached.device == flame.faces.device:
        return cached
    mask = getattr(flame.model, "head_vertex_mask", None)
    if mask is None:
        hf = torch.ones(flame.faces.shape[0], dtype=torch.bool, device=flame.faces.device)
    else:
        vm = torch.as_tensor(np.asarray(mask, dtype=bool), device=flame.faces.device)
        hf = vm[flame.faces].any(-1)
    _HEAD_FACES[flame] = hf
    return hf


# ---------------------------------------------------------------------------------------------
# maps
# ---------------------------------------------------------------------------------------------


def _latent_size(camera: Camera, latent_downsample: int) -> tuple[int, int]:
    d = int(latent_downsample)
    if d < 1 or camera.height % d or camera.width % d:
        raise MVP4DError(
            "BAD_INPUT",
            f"camera {camera.name!r}: image size {camera.width}x{camera.height} is not a multiple of the "
            f"latent downsampling {latent_downsample}",
        )
    return camera.height // d, camera.width // d


def _cam_tensors(camera: Camera, B: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    K = torch.as_tensor(camera.K, dtype=torch.float32, device=device)
    w2c = torch.as_tensor(camera.world_to_cam, dtype=torch.float32, device=device)
    return w2c.expand(B, 4, 4), K.expand(B, 3, 3)


def _render_geometry(flame: Flame, vertices: torch.Tensor, offsets: torch.Tensor, motion: torch.Tensor | None,
                     camera: Camera, h: int, w: int) -> torch.Tensor:
    """(B, 51, h, w): pose encoding (42), expression (3), motion (6) for B meshes seen by ``camera``."""
    B, V = vertices.shape[:2]
    device = vertices.device
    rh, rw = RENDER_FACTOR * h, RENDER_FACTOR * w
    rcam = camera.scaled(rw, rh)
    w2c, K = _cam_tensors(rcam, B, device)
    faces = flame.faces
    frags = rasterize(vertices, faces, w2c, K, rh, rw, cull_backfaces=True, perspective_correct=False)
    canon = canonical_coordinates(flame).to(device)
    if motion is None:
        motion = vertices.new_zeros(B, V, 6)
    attrs = torch.cat([canon.expand(B, V, 3), offsets / EXPRESSION_SCALE, motion], dim=-1)
    vals = interpolate(frags, faces, attrs)  # (B, rh, rw, 12)
    fid = frags.face_id
    mask = (fid >= 0) & _head_faces(flame)[fid.clamp(min=0)]
    out = torch.cat([pose_encoding(vals[..., :3]), vals[..., 3:]], dim=-1) * mask[..., None]
    out = out.permute(0, 3, 1, 2)
    return Fn.avg_pool2d(out, RENDER_FACTOR) if RENDER_FACTOR > 1 else out


def ray_maps(camera: Camera, ref_camera: Camera, height: int, width: int) -> torch.Tensor:
    """(6, height, width): ray directions (3) and origin (3) of ``camera`` in ``ref_camera``'s frame.

    Directions go through the pixel centres of ``camera`` rescaled to ``height x width``, rotated by
    the reference world->camera rotation; the origin is ``R_ref (C - C_ref)`` (constant).
    """
    _, d = camera.rays(height, width)  # (h, w, 3) world, unit
    R = ref_camera.R
    d_ref = d @ R.T
    o_ref = R @ (camera.center - ref_camera.center)
    o = np.broadcast_to(o_ref, d_ref.shape)
    return torch.from_numpy(np.concatenate([d_ref, o], axis=-1).astype(np.float32)).permute(2, 0, 1).contiguous()


def latent_frame_indices(num_frames: int) -> list[int]:
    """Output frame kept for each latent frame: ``[0, 4, 8, ..., num_frames - 1]`` (F = 1 + 4 F~)."""
    F = int(num_frames)
    if F < 1 or (F - 1) % TEMPORAL_COMPRESSION:
        raise MVP4DError("BAD_INPUT", f"a video must have 1 + 4k frames (1, 5, 9, ...), got {F}",
                         "Use a frame count allowed by the presets (protocol.PRESETS).")
    return list(range(0, F, TEMPORAL_COMPRESSION))


def _area_down(mask, h: int, w: int, what: str) -> torch.Tensor:
    m = mask.detach().float().cpu() if isinstance(mask, torch.Tensor) else torch.from_numpy(
        np.asarray(mask, dtype=np.float32))
    if m.ndim != 2 or m.shape[0] % h or m.shape[1] % w or m.shape[0] // h != m.shape[1] // w:
        raise MVP4DError("BAD_INPUT", f"{what} has shape {tuple(m.shape)}, expected a multiple of ({h}, {w})")
    k = m.shape[0] // h
    return Fn.avg_pool2d(m[None, None], k)[0, 0] if k > 1 else m


@torch.no_grad()
def reference_conditioning(
    flame: Flame,
    params: FlameParams,
    ref_camera: Camera,
    outcrop_mask=None,
    latent_downsample: int = LATENT_DOWNSAMPLE,
    *,
    geometry: HeadGeometry | None = None,
) -> torch.Tensor:
    """Conditioning ``(NUM_CHANNELS, h, w)`` of the reference image (``reference_mask`` = 1, no motion).

    ``params``: one frame; ``ref_camera``: the reference crop camera at image resolution H x W;
    ``outcrop_mask`` (H, W): 1 inside the original photo (``crop_image``), ``None`` = all ones.
    Returned on ``flame``'s device, float32.
    """
    if params.num_frames != 1:
        raise MVP4DError("BAD_INPUT", f"reference conditioning needs one frame of parameters, got {params.num_frames}")
    h, w = _latent_size(ref_camera, latent_downsample)
    geo = geometry if geometry is not None else head_geometry(flame, params)
    device = flame.device
    cond = torch.zeros(NUM_CHANNELS, h, w, dtype=torch.float32, device=device)
    g = _render_geometry(flame, geo.vertices[:1].to(device), geo.offsets[:1].to(device), None, ref_camera, h, w)[0]
    cond[: 3 * _P + 3] = g[: 3 * _P + 3]
    cond[CHANNEL_SLICES["ray_direction"].start : CHANNEL_SLICES["ray_origin"].stop] = ray_maps(
        ref_camera, ref_camera, h, w).to(device)
    cond[CHANNEL_SLICES["reference_mask"]] = 1.0
    if outcrop_mask is None:
        cond[CHANNEL_SLICES["outcrop_mask"]] = 1.0
    else:
        if tuple(np.shape(outcrop_mask)) != (ref_camera.height, ref_camera.width):
            raise MVP4DError("BAD_INPUT", f"outcrop_mask has shape {tuple(np.shape(outcrop_mask))}, expected "
                             f"({ref_camera.height}, {ref_camera.width}) like the reference camera")
        cond[CHANNEL_SLICES["outcrop_mask"]] = _area_down(outcrop_mask, h, w, "outcrop_mask").to(device)
    return cond


@torch.no_grad()
def video_conditioning(
    flame: Flame,
    params: FlameParams,
    camera: Camera,
    ref_camera: Camera,
    reference_frames: Sequence[int] = (),
    latent_downsample: int = LATENT_DOWNSAMPLE,
    *,
    geometry: HeadGeometry | None = None,
) -> torch.Tensor:
    """Conditioning ``(1 + F~, NUM_CHANNELS, h, w)`` of one view of a video of F = 1 + 4 F~ frames.

    ``camera``: this view's camera at image resolution H x W (constant over frames); ``ref_camera``:
    the reference crop camera (frame of the ray maps). Latent frame k is conditioned on output frame
    0 (k = 0) or 4k; ``reference_frames`` lists latent frames given as clean references
    (``reference_mask`` = 1 there). ``geometry`` (from :func:`head_geometry` of the same ``params``)
    skips re-evaluating FLAME for every view. One rasterisation call for all latent frames.
    """
    keep = latent_frame_indices(params.num_frames)
    n = len(keep)
    refs = [int(k) for k in reference_frames]
    if any(not 0 <= k < n for k in refs):
        raise MVP4DError("BAD_INPUT", f"reference_frames {refs} out of range for {n} latent frames")
    h, w = _latent_size(camera, latent_downsample)
    geo = geometry if geometry is not None else head_geometry(flame, params)
    if geo.num_frames != params.num_frames:
        raise MVP4DError("BAD_INPUT", f"geometry has {geo.num_frames} frames, parameters {params.num_frames}")
    device = flame.device
    verts = geo.vertices.to(device)
    T, V = verts.shape[:2]
    kept = torch.as_tensor(keep, device=device)
    motion = verts.new_zeros(n, V, 6)
    if n > 1:
        w2c, K = _cam_tensors(camera, T, device)
        uv = project_points(verts, w2c, K)[..., :2] / float(camera.height)  # (T, V, 2) image heights
        r = kept[1:]
        disp = torch.cat([uv[r - TEMPORAL_COMPRESSION + j] - uv[r] for j in (1, 2, 3)], dim=-1)
        motion[1:] = torch.nan_to_num(disp, nan=0.0, posinf=0.0, neginf=0.0).clamp(-_MOTION_CLAMP, _MOTION_CLAMP)
    g = _render_geometry(flame, verts[kept], geo.offsets.to(device)[kept], motion, camera, h, w)
    cond = torch.zeros(n, NUM_CHANNELS, h, w, dtype=torch.float32, device=device)
    cond[:, : 3 * _P + 3] = g[:, : 3 * _P + 3]
    cond[:, CHANNEL_SLICES["motion_1"].start :] = g[:, 3 * _P + 3 :]
    rays = ray_maps(camera, ref_camera, h, w).to(device)
    cond[:, CHANNEL_SLICES["ray_direction"].start : CHANNEL_SLICES["ray_origin"].stop] = rays[None]
    if refs:
        cond[torch.as_tensor(refs, device=device), CHANNEL_SLICES["reference_mask"]] = 1.0
    cond[:, CHANNEL_SLICES["outcrop_mask"]] = 1.0
    return cond


# ---------------------------------------------------------------------------------------------
# preview
# ---------------------------------------------------------------------------------------------


def visualize(cond: torch.Tensor, scale: int = 4) -> np.ndarray:
    """A uint8 RGB preview of conditioning ``(C, h, w)`` (one row) or ``(N, C, h, w)`` (N rows).

    Tiles, left to right: decoded canonical xyz, expression deformation, ray direction, ray origin
    (0.5 + 0.5 o), masks (R = reference, G = out-crop, B = head coverage), motion to frame 4k-3
    (R, G = 0.5 + 10 (du, dv)). Each latent pixel becomes ``scale x scale`` pixels.
    """
    c = cond.detach().float().cpu()
    if c.ndim == 3:
        c = c[None]
    if c.ndim != 4 or c.shape[1] != NUM_CHANNELS:
        raise MVP4DError("BAD_INPUT", f"visualize expects (C, h, w) or (N, C, h, w) with C = {NUM_CHANNELS}")
    S = CHANNEL_SLICES
    rows = []
    for x in c:
        cover = (x[_POSE].abs().sum(0) > 0).float()
        pose = (decode_pose(x) + 1.0) * 0.5 * cover
        expr = (0.5 + 0.5 * x[S["expression"]]) * cover
        rays = 0.5 + 0.5 * x[S["ray_direction"]]
        origin = 0.5 + 0.5 * x[S["ray_origin"]]
        masks = torch.stack([x[S["reference_mask"]][0], x[S["outcrop_mask"]][0], cover])
        m = x[S["motion_1"]]
        motion = torch.stack([0.5 + 10 * m[0], 0.5 + 10 * m[1], torch.full_like(m[0], 0.5)]) * cover
        rows.append(torch.cat([pose, expr, rays, origin, masks, motion], dim=2))
    img = torch.cat(rows, dim=1).clamp(0, 1).permute(1, 2, 0).numpy()
    img = np.repeat(np.repeat(img, int(scale), axis=0), int(scale), axis=1)
    return np.rint(img * 255).astype(np.uint8)
