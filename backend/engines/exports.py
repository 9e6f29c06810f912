"""``python -m backend export --format glb|spz``: an avatar bundle for game engines and web viewers.

* ``glb``: the rigged head (joints, skin, morph targets, animation; the head model is needed for the
  blendshapes: ``--flame``, default the toy head when the avatar was made with it) and its splats,
  skinned with per-splat morph targets (:mod:`.gltf`). ``--frame`` is the baked frame: its fine detail
  is in the splats' rest positions (skinned, rigid) or its posed splats are written (static).
* ``spz``: the Gaussians of ``--frame`` in Niantic's SPZ (:mod:`.spz`).

PLY axes (``--ply-axes`` of the PLY exports): ``y-up`` (default) writes FLAME/glTF axes as they are,
x right, y up, z toward the viewer, which three.js/Spark, PlayCanvas, SuperSplat and Blender show
upright; ``y-down`` rotates 180 degrees about x (x right, y down, z away: the 3DGS/COLMAP
convention) for viewers that expect it, e.g. Babylon.js, which flips y when it loads a PLY.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..avatar.bundle import AvatarBundle
from ..avatar.world_gaussians import world_gaussians_np
from ..errors import MVP4DError
from .gltf import GlbOptions, write_avatar_glb
from .rig_np import rig_from_bundle, splats_from_bundle
from .spz import write_spz

PLY_AXES = ("y-up", "y-down")
_X180 = np.array([0.0, 1.0, 0.0, 0.0])  # wxyz: 180 degrees about x


def to_ply_axes(w: dict[str, np.ndarray], axes: str) -> dict[str, np.ndarray]:
    """World Gaussians (``means``, ``quats`` wxyz, ...) in the PLY axes ``axes`` (see the module docstring)."""
    if axes not in PLY_AXES:
        raise MVP4DError("BAD_INPUT", f"unknown PLY axes {axes!r}", f"Use one of: {', '.join(PLY_AXES)}.")
    if axes == "y-up":
        return w
    from ..avatar.binding_np import quat_multiply_np

    out = dict(w)
    out["means"] = (w["means"] * np.array([1.0, -1.0, -1.0])).astype(w["means"].dtype)
    out["quats"] = quat_multiply_np(np.broadcast_to(_X180, w["quats"].shape), w["quats"]).astype(w["quats"].dtype)
    return out


def _head_model(bundle: AvatarBundle, flame: str | None):
    from ..flame.io import load_flame

    wanted = str(bundle.metadata.get("flame_model_id", "unknown"))
    if flame is None:
        if not wanted.startswith("toy"):
            raise MVP4DError("BAD_INPUT", f"the .glb needs the avatar's head model ({wanted}) for its blendshapes",
                             "Pass --flame /path/to/the FLAME .pkl/.npz the avatar was made with.")
        flame = "toy"
    return load_flame(flame)


def export_glb(bundle: AvatarBundle, out_path: str | Path, frame: int = 0, flame: str | None = None,
               options: GlbOptions | None = None) -> Path:
    """The rigged .glb of ``bundle`` (atomic)."""
    rig = rig_from_bundle(bundle, _head_model(bundle, flame))
    return write_avatar_glb(out_path, rig, splats_from_bundle(bundle, frame), options or GlbOptions())


def export_spz(bundle: AvatarBundle, out_path: str | Path, frame: int = 0) -> Path:
    """The Gaussians of ``frame`` as SPZ (atomic)."""
    w = world_gaussians_np(bundle, frame)
    return write_spz(out_path, w["means"], w["quats"], w["log_scales"], w["opacity_logit"], w["sh"])
