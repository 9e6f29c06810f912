"""A small but real avatar bundle for the bundle/export tests: the toy head animated by FLAME."""

from __future__ import annotations

import numpy as np
import torch

from backend.avatar.bundle import AvatarBundle
from backend.flame import Flame, FlameParams, load_flame


def toy_bundle(num_frames: int = 3, num_gaussians: int = 3000, sh_degree: int = 3, detail: bool = True,
               seed: int = 0) -> AvatarBundle:
    """Random triangle-local Gaussians on the toy head, posed by a few FLAME frames."""
    model = load_flame("toy")
    flame = Flame(model)
    g = torch.Generator().manual_seed(seed)
    params = FlameParams.zeros(flame, num_frames)
    params.expr = 0.8 * torch.randn(num_frames, flame.num_expr, generator=g)
    params.jaw_pose[:, 0] = torch.linspace(0.0, 0.3, num_frames)
    params.global_rot[:, 1] = torch.linspace(0.0, 0.2, num_frames)
    with torch.no_grad():
        verts = flame(params).vertices.numpy()
        rest = flame.neutral_vertices().numpy()
    F = len(model.faces)
    N = num_gaussians
    K = (sh_degree + 1) ** 2
    rng = np.random.default_rng(seed)
    arrays = {
        "parent_face": rng.integers(0, F, N),
        "local_position": rng.normal(0, 0.4, (N, 3)),
        "local_rotation": rng.normal(0, 1, (N, 4)),
        "log_scale": rng.normal(-0.5, 0.3, (N, 3)),
        "opacity_logit": rng.normal(0, 2, N),
        "sh": rng.normal(0, 0.3, (N, K, 3)),
        "faces": model.faces,
        "rest_vertices": rest.reshape(-1, 3),
        "expr": params.expr.numpy(),
        "jaw_pose": params.jaw_pose.numpy(),
        "neck_pose": params.neck_pose.numpy(),
        "eye_pose": params.eye_pose.numpy(),
        "global_rot": params.global_rot.numpy(),
        "transl": params.transl.numpy(),
        "vertices": verts,
    }
    if detail:
        arrays["detail_offsets"] = rng.normal(0, 0.05, (num_frames, N, 3))
    meta = {
        "fps": 24.0,
        "flame_model_id": model.model_id,
        "camera_ring": {"preset": "tiny", "num_views": 6},
        "generator": {"name": "projection", "seed": 0},
        "settings": {"iterations": 10, "sh_degree": sh_degree},
    }
    return AvatarBundle.build(arrays, meta)
