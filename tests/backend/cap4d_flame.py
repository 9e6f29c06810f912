"""A synthetic head with FLAME's layout (5,023 vertices, lower lip at vertex 3533) and CAP4D geometry for it.

The real FLAME cannot be shipped, and CAP4D needs its vertex count and lip vertex: the toy head (4,912
vertices, its landmarks and skinning intact) is padded with unreferenced copies of its lower-lip
vertex up to 5,023 and reordered so that the lower lip sits at index 3533. The matching CAP4D template
(what a checkpoint's ``props``/``faces``/``face_mask`` hold) is built from it the way the reference
describes: FLAME + 200 mouth vertices, centred and divided by the signed maximum.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from backend.cap4d.mouth import FLAME_VERTICES, JAW_JOINT, LIP_VERTEX, mouth_vertices
from backend.flame import Flame
from backend.flame.model import FlameModel
from backend.flame.toy import build_toy_head

_LOWER_LIP_MEDIAPIPE = 17


def flame_layout_head() -> FlameModel:
    toy = build_toy_head()
    i = int(np.nonzero(toy.landmark_ids == _LOWER_LIP_MEDIAPIPE)[0][0])
    face = toy.faces[toy.landmark_faces[i]]
    lip = int(face[int(np.argmax(toy.landmark_bary[i]))])
    n = toy.num_vertices
    src = np.concatenate([np.arange(n), np.full(FLAME_VERTICES - n, lip)])  # padded vertex -> toy vertex
    src[[LIP_VERTEX, lip]] = src[[lip, LIP_VERTEX]]  # the lip moves to index 3533
    new_of_old = np.empty(n, dtype=np.int64)
    new_of_old[src[:n]] = np.arange(n)  # the first n slots hold every toy vertex exactly once
    jreg = toy.J_regressor[:, src].copy()
    jreg[:, n:] = 0.0  # copies do not pull joints
    mask = toy.head_mask()[src].copy()
    mask[n:] = False
    return replace(toy, v_template=toy.v_template[src], faces=new_of_old[toy.faces].astype(toy.faces.dtype),
                   shapedirs=toy.shapedirs[src], exprdirs=toy.exprdirs[src], posedirs=toy.posedirs[src],
                   J_regressor=jreg, lbs_weights=toy.lbs_weights[src], head_vertex_mask=mask,
                   model_id="test:flame-layout").validate()


def mouth_faces(lat: int = 10, lon: int = 20) -> np.ndarray:
    """Triangles of the mouth cap's ring-by-ring vertex grid (longitudes wrap)."""
    tri = []
    for i in range(lat - 1):
        for j in range(lon):
            a, b = i * lon + j, i * lon + (j + 1) % lon
            c, d = a + lon, b + lon
            tri += [[a, d, c], [a, b, d]]
    return np.asarray(tri, dtype=np.int64)


def cap4d_geometry(model: FlameModel) -> dict[str, torch.Tensor]:
    flame = Flame(model)
    with torch.no_grad():
        neutral = flame.neutral_vertices(torch.zeros(flame.num_shape))
        mouth = mouth_vertices(neutral, flame.J_regressor[JAW_JOINT] @ neutral)
    verts = torch.cat([neutral, mouth]).float()
    props = verts - verts.mean(0, keepdim=True)
    props = props / props.max()
    faces = np.concatenate([model.faces, mouth_faces() + FLAME_VERTICES])
    head = model.head_mask()
    face_mask = np.concatenate([head[model.faces].any(-1), np.ones(len(mouth_faces()), dtype=bool)])
    assert math.isfinite(float(props.abs().max()))
    return {"props": props, "faces": torch.from_numpy(faces), "face_mask": torch.from_numpy(face_mask),
            "faces_uvs": torch.from_numpy(faces.copy())}
