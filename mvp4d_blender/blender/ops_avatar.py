"""Import and export operators for avatars (thin: check, call one function, report)."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from ..io.bundle import BundleError
from . import avatar as avatarmod, export, jobspec


class MVP4D_OT_import_avatar(bpy.types.Operator, ImportHelper):
    """Import an avatar bundle (avatar.safetensors) bound to a FLAME rig"""

    bl_idname = "mvp4d.import_avatar"
    bl_label = "Import avatar"
    bl_options = {"REGISTER", "UNDO"}
    filename_ext = ".safetensors"
    filter_glob: StringProperty(default="*.safetensors", options={"HIDDEN"})
    rig: StringProperty(name="Rig", description="FLAME rig head mesh (empty: the scene's)")

    def execute(self, context):
        try:
            rig = jobspec.resolve_rig(self.rig, context.scene)
            obj, msgs = avatarmod.import_avatar(context, self.filepath, rig)
        except jobspec.InputError as e:
            self.report({"ERROR"}, f"{e.message} - {e.hint}")
            return {"CANCELLED"}
        except (BundleError, avatarmod.AvatarImportError) as e:
            self.report({"ERROR"}, f"Cannot import {Path(self.filepath).name}: {e}")
            return {"CANCELLED"}
        context.scene.mvp4d.last_avatar = obj
        self.report({"INFO"}, f"Imported {obj.name}" + (f" ({'; '.join(msgs)})" if msgs else ""))
        return {"FINISHED"}


def _avatar(context, name: str):
    if name:
        return bpy.data.objects.get(name)
    obj = context.active_object
    return obj if avatarmod.is_avatar(obj) else context.scene.mvp4d.last_avatar


class MVP4D_OT_export_avatar(bpy.types.Operator, ExportHelper):
    """Export the avatar: 3DGS PLY of a frame, a PLY per frame, or a rigged glTF with splats"""

    bl_idname = "mvp4d.export_avatar"
    bl_label = "Export avatar"
    filename_ext = ""
    format: EnumProperty(name="Format", items=export.FORMATS, default="PLY")
    frame: IntProperty(name="Frame", default=-1000000, description="Frame to export (default: the current one)")
    avatar: StringProperty(name="Avatar", description="Avatar object (empty: active or last imported)")
    check_extension = None

    @classmethod
    def poll(cls, context):
        if _avatar(context, "") is None:
            cls.poll_message_set("Select an imported avatar")
            return False
        return True

    def invoke(self, context, event):
        self.filepath = {"PLY": "avatar.ply", "GLB": "avatar.glb"}.get(self.format, "avatar_frames")
        return super().invoke(context, event)

    def execute(self, context):
        obj = _avatar(context, self.avatar)
        if not avatarmod.is_avatar(obj):
            self.report({"ERROR"}, "No avatar to export - import one (or pass avatar=NAME)")
            return {"CANCELLED"}
        scene = context.scene
        frame = scene.frame_current if self.frame == -1000000 else self.frame
        path = Path(bpy.path.abspath(self.filepath))
        try:
            if self.format == "PLY":
                out = export.export_ply(scene, obj, path.with_suffix(".ply"), frame)
            elif self.format == "GLB":
                out = export.export_glb(scene, obj, path.with_suffix(".glb"), frame)
            else:
                out = path.with_suffix("")
                export.export_ply_sequence(scene, obj, out, range(scene.frame_start, scene.frame_end + 1))
        except (OSError, ValueError) as e:
            self.report({"ERROR"}, f"Export failed: {e}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {out}")
        return {"FINISHED"}


CLASSES = (MVP4D_OT_import_avatar, MVP4D_OT_export_avatar)
