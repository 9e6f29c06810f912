"""Blender API differences between the versions the add-on supports (4.2 LTS to 5.3), in one place.

Each helper uses the newer API where it exists and falls back to the older one, so callers never test
``bpy.app.version`` themselves. Tested on the bpy 4.5 and bpy 5.3 wheels (``make test``).
"""

from __future__ import annotations

from typing import Any

import bpy


def _input_identifier(mod, name: str) -> str:
    for item in mod.node_group.interface.items_tree:
        if item.item_type == "SOCKET" and item.in_out == "INPUT" and item.name == name:
            return item.identifier
    raise KeyError(f"the node group '{mod.node_group.name}' has no input '{name}'")


def _new_inputs(mod):
    """Blender 5.2+: ``mod.properties.inputs.<identifier>.value``; None on older versions (ID properties)."""
    props = getattr(mod, "properties", None)
    return getattr(props, "inputs", None) if props is not None else None


def set_modifier_input(mod, name: str, value: Any) -> None:
    """Set the Geometry Nodes modifier input called ``name`` (the group interface's socket name)."""
    ident = _input_identifier(mod, name)
    inputs = _new_inputs(mod)
    if inputs is not None:
        getattr(inputs, ident).value = value
    else:
        mod[ident] = value


def get_modifier_input(mod, name: str) -> Any:
    """The value of the Geometry Nodes modifier input called ``name``."""
    ident = _input_identifier(mod, name)
    inputs = _new_inputs(mod)
    return getattr(inputs, ident).value if inputs is not None else mod[ident]


def add_driver(owner, data_path: str, index: int = -1):
    """``owner.driver_add(data_path, index)`` whose F-curve passes the driver's value through unchanged.

    Blender 5.x gives a new driver F-curve two Bezier keyframes (0, 0) and (1, 1) with linear
    extrapolation instead of 4.x's identity Generator modifier: values between 0 and 1 then follow
    the ease of the Bezier segment (a rig driver computing 7.7e-5 got about 0), values outside it
    are exact. Without keyframes and modifiers an F-curve returns the driver's value as it is, on
    every version. Returns the F-curve."""
    fc = owner.driver_add(data_path, index)
    fc.keyframe_points.clear()
    for m in list(fc.modifiers):
        fc.modifiers.remove(m)
    return fc


def set_wildcard_pattern(node) -> None:
    """Remove Named Attribute matching a ``*`` pattern: a node property on 4.2-4.5, a menu input on 5.x."""
    if "Pattern Mode" in node.inputs:
        node.inputs["Pattern Mode"].default_value = "Wildcard"
    else:
        node.pattern_mode = "WILDCARD"


def set_surface_render_method(mat, method: str) -> None:
    """EEVEE Next's per-material transparency mode ('DITHERED'/'BLENDED'); absent before 4.2."""
    if hasattr(mat, "surface_render_method"):
        mat.surface_render_method = method


def use_material_nodes(mat) -> None:
    """Materials always use nodes from 5.0 on (``use_nodes`` is deprecated); older versions need the flag."""
    if mat.node_tree is None or bpy.app.version < (5, 0, 0):
        mat.use_nodes = True


def draw_modifier_input(layout, mod, item, text: str) -> None:
    """A widget for one Geometry Nodes modifier input (``item``: the group interface socket)."""
    inputs = _new_inputs(mod)
    if inputs is not None:
        layout.prop(getattr(inputs, item.identifier), "value", text=text)
    else:
        layout.prop(mod, f'["{item.identifier}"]', text=text)
