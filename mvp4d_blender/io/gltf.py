"""The rigged .glb writer, from the backend's torch-free ``backend/engines`` package (one definition).

The add-on and ``python -m backend export --format glb`` write the same file: the head's joints, skin,
morph targets and animation, and the splats skinned to that skin with per-splat morph targets (or
rigid groups, or static), ``COLOR_0`` and ``KHR_gaussian_splatting``. The SPZ writer and the PLY axes
option come from the same package. See ``docs/engines.md``.
"""

from __future__ import annotations

import importlib

from .. import backend_link


def _engines(name: str):
    backend_link.protocol()  # loads the private backend package
    return importlib.import_module(f"{backend_link._PRIVATE}.engines.{name}")


_gltf = _engines("gltf")
GlbOptions = _gltf.GlbOptions
RigExport = _gltf.RigExport
SplatExport = _gltf.SplatExport
write_avatar_glb = _gltf.write_avatar_glb
PROXY_MODES = _gltf.PROXY_MODES
SPLAT_MODES = _gltf.SPLAT_MODES
read_glb = _engines("gltf_builder").read_glb
read_accessor = _engines("gltf_builder").read_accessor
write_spz = _engines("spz").write_spz
to_ply_axes = _engines("exports").to_ply_axes
PLY_AXES = _engines("exports").PLY_AXES

__all__ = ["GlbOptions", "RigExport", "SplatExport", "write_avatar_glb", "PROXY_MODES", "SPLAT_MODES",
           "read_glb", "read_accessor", "write_spz", "to_ply_axes", "PLY_AXES"]
