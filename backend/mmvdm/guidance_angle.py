"""Which angle the multi-view CFG scale grows with (paper §5, after Kant et al. 2025).

The paper: "we linearly increase the guidance scale with the angular distance to the closest reference
view, from 1.1 (0 degree deviation) to 1.6 (180 degree deviation)" (:func:`.sampler.guidance_scale`).
Its reference is the *input reference image*: guidance grows as a view turns away from what the
subject looked like in the photo, where the model has least to go on. Two readings are kept
(``generator.cfg_angle``):

* ``"reference_image"`` (default, the paper's meaning): the angle between the view and the reference
  image's camera. A back view gets ~1.6 in every pass.
* ``"closest_reference"``: the smallest angle to the reference image's camera *or* any clean
  reference view of the pass (the key views given to a cluster, mode 2/4). A back view next to a key
  view then gets ~1.1: the earlier behaviour, kept as an option.

A view's own earlier frames (mode 3/4 context) are the same viewpoint and never count.
"""

from __future__ import annotations

from typing import Sequence

from ..cameras import Camera
from ..cameras.rings import view_angle
from ..errors import MVP4DError
from ..protocol import CFG_ANGLE_MODES

__all__ = ["CFG_ANGLE_MODES", "DEFAULT_CFG_ANGLE", "cfg_angle"]

DEFAULT_CFG_ANGLE = CFG_ANGLE_MODES[0]


def cfg_angle(view: Camera, reference_camera: Camera, reference_views: Sequence[Camera] = (), center=None,
              mode: str = DEFAULT_CFG_ANGLE) -> float:
    """Degrees that the CFG scale of ``view`` grows with (see the module docstring).

    ``center``: the head centre the directions are measured from (None: the optical axes).
    """
    if mode not in CFG_ANGLE_MODES:
        raise MVP4DError("BAD_INPUT", f"generator.cfg_angle must be one of {', '.join(CFG_ANGLE_MODES)}, got {mode!r}",
                         "Use reference_image (the paper's meaning) or closest_reference.")
    angles = [view_angle(view, reference_camera, center)]
    if mode == "closest_reference":
        angles += [view_angle(view, r, center) for r in reference_views if r is not view]
    return min(angles)
