"""CAP4D's mouth interior: 200 vertices of a half sphere placed behind the lips of the user's FLAME.

FLAME has no mouth interior, so CAP4D appends a cap (half a UV sphere: 10 latitude rings × 20
longitudes, listed ring by ring) whose size and place follow the identity: it sits on the line from
the jaw joint to a lip vertex (FLAME vertex 3533), 3/4 of the way and 5 mm back, scaled to a quarter of
that distance, its pole pointing along the line. It is placed from the *neutral* (shape-only) mesh and
then moves rigidly with the head (the root joint), not with the jaw or the neck, as upstream does. The
checkpoint's ``props``/``faces`` list these 200 vertices after FLAME's 5,023, in this order.
"""

from __future__ import annotations

import math

import torch

__all__ = ["MOUTH_VERTICES", "LIP_VERTEX", "JAW_JOINT", "FLAME_VERTICES", "mouth_sphere", "mouth_vertices"]

FLAME_VERTICES = 5023
MOUTH_VERTICES = 200
LIP_VERTEX = 3533
JAW_JOINT = 2
_LAT, _LON = 20, 20


def mouth_sphere() -> torch.Tensor:
    """(200, 3) unit half-sphere vertices in the cap's own frame (pole along +z after the axis flips)."""
    lat = torch.linspace(-math.pi / 2, math.pi / 2, _LAT, dtype=torch.float64)[: _LAT // 2]
    lon = torch.linspace(0.0, 2 * math.pi, _LON, dtype=torch.float64)
    la, lo = torch.meshgrid(lat, lon, indexing="ij")
    v = torch.stack([la.cos() * lo.cos(), la.cos() * lo.sin(), la.sin()], dim=-1).reshape(-1, 3)
    return v * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)


def mouth_vertices(neutral: torch.Tensor, jaw_joint: torch.Tensor, lip_offset: float = 0.005) -> torch.Tensor:
    """(200, 3) mouth vertices in the canonical frame from the neutral mesh (V, 3) and the jaw joint (3,)."""
    dtype = neutral.dtype
    jaw = jaw_joint.double()
    offset = neutral[LIP_VERTEX].double() - jaw
    dist = offset.norm()
    z = offset / dist
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64, device=neutral.device)
    x = torch.linalg.cross(up, z)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    y = y / y.norm()
    rot = torch.stack([x, y, z], dim=-1)  # columns: the cap's axes in the head frame
    v = mouth_sphere().to(neutral.device) * dist * 0.25
    centre = jaw + offset * 0.75 - lip_offset * z
    return (v @ rot.T + centre).to(dtype)
