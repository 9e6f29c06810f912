"""The avatar mesh's splat attributes: colours (sRGB or linear) and the display modifier's inputs.

Shared by ``avatar.py`` (import) and ``render.py`` (render set-up), which is why it lives apart from
both: neither imports the other.
"""

from __future__ import annotations

import numpy as np

from . import nodes
from .compat import get_modifier_input, set_modifier_input


SH_C0 = 0.28209479177387814


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def sh_dc_colour(sh: np.ndarray) -> np.ndarray:
    return np.clip(0.5 + SH_C0 * sh[:, 0, :], 0.0, 1.0)


def set_colour_space(obj, srgb: bool) -> None:
    """Emit the splats' sRGB values (blend like gsplat, shown with the Raw view) or linear colours.

    The material reads ``splat_color``; this copies ``splat_color_srgb`` or the linear colours of
    ``sh_0`` into it, so the switch costs one attribute write, not a material change."""
    me = obj.data
    if srgb:
        src = _read(me, "splat_color_srgb", 4)
    else:
        rgb = srgb_to_linear(sh_dc_colour(_read(me, "sh_0", 3)[:, None, :]))
        src = np.concatenate([rgb, np.ones((len(rgb), 1))], axis=1)
    me.attributes["splat_color"].data.foreach_set("color", np.ascontiguousarray(src, np.float32).ravel())
    obj["mvp4d_srgb_blend"] = bool(srgb)
    me.update()


def display_modifier(obj):
    return next((m for m in obj.modifiers if m.type == "NODES" and m.node_group
                 and m.node_group.name.startswith(nodes.DISPLAY_GROUP)), None)


def set_display(obj, **values) -> None:
    """Display options (``Show Splats``, ``Splat Size``, ``Min Opacity``, ``Point Radius``)."""
    mod = display_modifier(obj)
    for k, v in values.items():
        set_modifier_input(mod, k, v)
    obj.update_tag()


def get_display(obj, name: str):
    return get_modifier_input(display_modifier(obj), name)


def _read(mesh, name: str, comps: int, dtype=np.float32) -> np.ndarray:
    a = mesh.attributes[name]
    key = "vector" if a.data_type == "FLOAT_VECTOR" else ("color" if a.data_type == "FLOAT_COLOR" else "value")
    buf = np.empty(len(a.data) * comps, dtype)
    a.data.foreach_get(key, buf)
    return buf.reshape(-1, comps) if comps > 1 else buf
