"""The avatar bundle ``avatar.safetensors``, read with the backend's own reader (numpy + safetensors).

``backend/avatar/bundle.py`` is the one definition of the bundle (keys and dtypes parsed from
``backend.protocol.BUNDLE_TENSORS``, validation with messages naming the tensor); it imports neither
torch nor bpy, so the add-on uses it from the backend copy shipped in the extension (imported under
a private name by :mod:`mvp4d_blender.backend_link`). This module only adapts its errors and gives
the animation as a dict of FLAME parameters.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from .. import backend_link

ANIMATION_PARAM_KEYS = ("expr", "jaw_pose", "neck_pose", "eye_pose", "global_rot", "transl")


class BundleError(ValueError):
    """The bundle is unreadable or breaks the contract; the message says which tensor and why."""


def _module():
    backend_link.protocol()  # loads the private backend package
    return importlib.import_module(f"{backend_link._PRIVATE}.avatar.bundle")


def read_bundle(path: str | Path) -> Any:
    """An ``AvatarBundle`` (numpy arrays, contract dtypes); :class:`BundleError` with the reason."""
    errors = backend_link.errors()
    try:
        b = _module().read_bundle(path)
    except errors.MVP4DError as e:
        raise BundleError(e.message) from e
    b.path = str(path)
    return b


def write_bundle(path: str | Path, arrays: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """Build, validate and write a bundle (tests, tools): arrays keyed by field or tensor name."""
    m = _module()
    return m.write_bundle(path, m.AvatarBundle.build(arrays, metadata))


def animation(bundle: Any) -> dict[str, np.ndarray]:
    """The per-frame FLAME parameters ``{expr, jaw_pose, ...}`` (T, k) as float64."""
    return {k: np.asarray(getattr(bundle, k), np.float64) for k in ANIMATION_PARAM_KEYS}
