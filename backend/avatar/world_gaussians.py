"""An avatar's world-space Gaussians at one bundle frame, in numpy (no torch).

One definition shared by the PLY exports (:mod:`.export`) and the game-engine exports
(:mod:`backend.engines.exports`): each splat posed on its parent triangle by the numpy binding
(:mod:`.binding_np`), with the frame's ``detail_offsets`` applied when the bundle has them.
"""

from __future__ import annotations

import numpy as np

from ..errors import MVP4DError
from .binding_np import local_to_world_np
from .bundle import AvatarBundle

__all__ = ["check_frame", "world_gaussians_np"]


def check_frame(bundle: AvatarBundle, frame: int) -> int:
    """``frame`` as an int if it is one of the bundle's frames, else ``BAD_INPUT`` naming the range."""
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not 0 <= frame < bundle.num_frames:
        raise MVP4DError("BAD_INPUT", f"frame {frame!r} is outside the avatar's {bundle.num_frames} frames",
                         f"Choose a frame from 0 to {bundle.num_frames - 1}.")
    return int(frame)


def world_gaussians_np(bundle: AvatarBundle, frame: int = 0) -> dict[str, np.ndarray]:
    """World Gaussians of ``frame`` as the PLY stores them (float32): ``means`` (N, 3), ``quats``
    (N, 4) unit wxyz, ``log_scales`` (N, 3), ``opacity_logit`` (N,), ``sh`` (N, K, 3)."""
    t = check_frame(bundle, frame)
    offsets = None if bundle.detail_offsets is None else bundle.detail_offsets[t]
    means, quats, log_scales = local_to_world_np(bundle.parent_face, bundle.local_position, bundle.local_rotation,
                                                 bundle.log_scale, bundle.vertices[t], bundle.faces, offsets)
    return {"means": means.astype(np.float32), "quats": quats.astype(np.float32),
            "log_scales": log_scales.astype(np.float32), "opacity_logit": bundle.opacity_logit.astype(np.float32),
            "sh": bundle.sh.astype(np.float32)}
