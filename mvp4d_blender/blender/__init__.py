"""The Blender side: everything here may import bpy; ``register``/``unregister`` are idempotent.

Classes come from each module's ``CLASSES`` (MolecularNodes-style); handlers and timers are owned
by :mod:`.runtime` and removed on unregister, so disabling the add-on leaves nothing behind.
"""

from __future__ import annotations

import bpy

from .. import backend_link
from . import menus, ops_avatar, ops_generate, ops_rig, ops_video, panels, prefs, props, runtime

_MODULES = (prefs, props, ops_rig, ops_generate, ops_avatar, ops_video, panels, menus)
_registered: list = []


def register() -> None:
    if _registered:
        return
    for mod in _MODULES:
        for cls in mod.CLASSES:
            bpy.utils.register_class(cls)
            _registered.append(cls)
    props.register_props()
    menus.register_menus()
    runtime.register_handlers()


def unregister() -> None:
    if not _registered:
        return
    runtime.unregister_handlers()
    menus.unregister_menus()
    prefs.shutdown()
    props.unregister_props()
    for cls in reversed(_registered):
        bpy.utils.unregister_class(cls)
    _registered.clear()
    backend_link.unload()
