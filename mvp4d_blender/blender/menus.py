"""The "MVP4D" submenu of the 3D viewport's Object menu and of the object context menu (right click).

The sidebar tab holds every step with its settings; this menu makes the one-click steps reachable from
where Blender users look first (and from F3 search through the operators), e.g. *Fit rig to reference*
on a selected rig without opening the Reference panel. A disabled entry shows why in its tooltip (the
operators' ``poll``).
"""

from __future__ import annotations

import bpy

#: (operator, icon) in workflow order
ENTRIES = (("mvp4d.add_rig", "MONKEY"), ("mvp4d.fit_rig", "CON_TRACKTO"), ("mvp4d.add_camera_ring", "CAMERA_DATA"),
           ("mvp4d.generate_avatar", "PLAY"), ("mvp4d.import_avatar", "IMPORT"), ("mvp4d.render_avatar", "RENDER_STILL"),
           ("mvp4d.export_avatar", "EXPORT"))


class MVP4D_MT_object(bpy.types.Menu):
    bl_idname = "MVP4D_MT_object"
    bl_label = "MVP4D"

    def draw(self, context):
        for op, icon in ENTRIES:
            self.layout.operator(op, icon=icon)


def _draw_submenu(self, context) -> None:
    self.layout.separator()
    self.layout.menu(MVP4D_MT_object.bl_idname)


#: the menus the submenu is appended to (each exists on Blender 4.2-5.3)
PARENTS = ("VIEW3D_MT_object", "VIEW3D_MT_object_context_menu")


def register_menus() -> None:
    for name in PARENTS:
        getattr(bpy.types, name).append(_draw_submenu)


def unregister_menus() -> None:
    for name in PARENTS:
        getattr(bpy.types, name).remove(_draw_submenu)


CLASSES = (MVP4D_MT_object,)
