"""``write_avatar_glb``: the rigged head and its splats as one binary glTF 2.0 file.

Layout: the FLAME joints (nodes, skin 0), the head mesh (proxy: none / hidden / visible, see
:mod:`.gltf_rig`), the splats (skinned with morph targets, rigid groups or static, see
:mod:`.gltf_splats`) and one animation that drives joints and the morph weights of head and splats
together. Everything is in glTF axes (+y up, metres), equal to FLAME space.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .gltf_builder import GltfBuilder
from .gltf_rig import PROXY_MODES, RigExport, add_animation, add_head, add_skeleton
from .gltf_splats import SPLAT_EXT, SPLAT_MODES, SplatExport, add_splats

__all__ = ["GlbOptions", "RigExport", "SplatExport", "write_avatar_glb", "PROXY_MODES", "SPLAT_MODES", "SPLAT_EXT"]


@dataclass(frozen=True)
class GlbOptions:
    """``proxy``: the head mesh none / hidden / visible; ``splats``: skinned / rigid / static;
    ``color_space``: the ``KHR_gaussian_splatting`` colour space of the SH coefficients."""

    proxy: str = "hidden"
    splats: str = "skinned"
    color_space: str = "srgb_rec709_display"

    def __post_init__(self) -> None:
        if self.proxy not in PROXY_MODES:
            raise ValueError(f"head proxy must be one of {PROXY_MODES}, not {self.proxy!r}")
        if self.splats not in SPLAT_MODES:
            raise ValueError(f"splat mode must be one of {SPLAT_MODES}, not {self.splats!r}")


def write_avatar_glb(path: str | Path, rig: RigExport | None, splats: SplatExport | None,
                     options: GlbOptions | None = None, color_space: str | None = None) -> Path:
    """Write the .glb atomically. Either part may be None (mesh only / splats only, static)."""
    opts = options or GlbOptions()
    cs = color_space or opts.color_space
    b = GltfBuilder()
    b.doc["nodes"] = []
    roots: list[int] = []
    joint_nodes: list[int] = []
    weight_nodes: list[int] = []
    if rig is not None:
        joint_nodes = add_skeleton(b, rig)
        roots.append(joint_nodes[rig.root])
        head = add_head(b, rig, opts.proxy)
        if head is not None:
            roots.append(head)
            if len(rig.target_names):
                weight_nodes.append(head)
    if splats is not None:
        splat_roots, splat_weights = add_splats(b, splats, rig, joint_nodes, opts.splats, cs)
        roots += splat_roots
        weight_nodes += splat_weights
    if rig is not None:
        add_animation(b, rig, joint_nodes, weight_nodes)
    b.doc["scenes"] = [{"name": "mvp4d", "nodes": roots}]
    b.doc["scene"] = 0
    return b.write(path)
