"""Import and export operators for avatars (thin: check, call one function, report)."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from .. import backend_link
from ..io.bundle import BundleError
from . import avatar as avatarmod, export, jobspec, render


class MVP4D_OT_import_avatar(bpy.types.Operator, ImportHelper):
    """Import an avatar bundle (avatar.safetensors) bound to a FLAME rig"""

    bl_idname = "mvp4d.import_avatar"
    bl_label = "Import avatar"
    bl_options = {"REGISTER", "UNDO"}
    filename_ext = ".safetensors"
    filter_glob: StringProperty(default="*.safetensors", options={"HIDDEN"})
    rig: StringProperty(name="Rig", description="FLAME rig head mesh (empty: the scene's)")
    with_cameras: BoolProperty(name="Corpus cameras", default=False,
                               description="Also add the cameras the avatar was generated from, named after the views")
    replace_keyframes: BoolProperty(name="Replace rig keyframes", default=False,
                                    description="Key the rig with the avatar's animation even where the rig has "
                                                "its own keyframes (off: an artist's animation is kept)")

    def execute(self, context):
        try:
            rig = jobspec.resolve_rig(self.rig, context.scene)
            obj, msgs = avatarmod.import_avatar(context, self.filepath, rig, with_cameras=self.with_cameras,
                                                replace_keyframes=self.replace_keyframes)
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
    """Export the avatar: 3DGS PLY of a frame, a PLY per frame, a rigged glTF with splats, or SPZ"""

    bl_idname = "mvp4d.export_avatar"
    bl_label = "Export avatar"
    filename_ext = ""
    format: EnumProperty(name="Format", items=export.FORMATS, default="PLY")
    head_proxy: EnumProperty(name="Head mesh", items=export.PROXIES, default="HIDDEN", description="glTF: the head mesh")
    splat_mode: EnumProperty(name="Splats", items=export.SPLAT_MODES, default="SKINNED",
                             description="glTF: how the splats follow the head")
    ply_axes: EnumProperty(name="PLY axes", items=export.PLY_AXES, default="Y_UP", description="PLY orientation")
    frame: IntProperty(name="Frame", default=1, description="Frame to export (unset: the current one)")
    avatar: StringProperty(name="Avatar", description="Avatar object (empty: active or last imported)")
    check_extension = None

    @classmethod
    def poll(cls, context):
        if _avatar(context, "") is None:
            cls.poll_message_set("Select an imported avatar")
            return False
        return True

    def invoke(self, context, event):
        self.filepath = {"PLY": "avatar.ply", "GLB": "avatar.glb", "SPZ": "avatar.spz"}.get(self.format, "avatar_frames")
        return super().invoke(context, event)

    def execute(self, context):
        obj = _avatar(context, self.avatar)
        if not avatarmod.is_avatar(obj):
            self.report({"ERROR"}, "No avatar to export - import one (or pass avatar=NAME)")
            return {"CANCELLED"}
        scene = context.scene
        frame = self.frame if self.properties.is_property_set("frame") else scene.frame_current
        path = Path(bpy.path.abspath(self.filepath))
        try:
            if self.format == "PLY":
                out = export.export_ply(scene, obj, path.with_suffix(".ply"), frame, self.ply_axes)
            elif self.format == "GLB":
                out = export.export_glb(scene, obj, path.with_suffix(".glb"), frame, self.head_proxy, self.splat_mode)
            elif self.format == "SPZ":
                out = export.export_spz(scene, obj, path.with_suffix(".spz"), frame)
            else:
                out = path.with_suffix("")
                export.export_ply_sequence(scene, obj, out, range(scene.frame_start, scene.frame_end + 1), self.ply_axes)
        except OSError as e:  # name the file the user chose, never the temporary one written first
            self.report({"ERROR"}, f"Export to {path} failed: {e.strerror or e}")
            return {"CANCELLED"}
        except (ValueError, backend_link.errors().MVP4DError) as e:  # the backend's: e.g. SPZ out of range
            self.report({"ERROR"}, f"Export to {path} failed: {e}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {out}")
        return {"FINISHED"}


class MVP4D_OT_render_avatar(bpy.types.Operator):
    """Render the avatar at a bundle frame through a camera, set up like the backend's renderer"""

    bl_idname = "mvp4d.render_avatar"
    bl_label = "Render avatar"
    camera: StringProperty(name="Camera", description="Camera object (empty: the scene camera)")
    frame: IntProperty(name="Frame", default=0, min=0, description="Bundle frame (0 = the first frame of the avatar)")
    resolution: IntProperty(name="Resolution", default=256, min=8, max=8192, description="Longer image side (px)")
    engine: EnumProperty(name="Engine", items=[("CYCLES", "Cycles", ""), ("EEVEE", "EEVEE", "")], default="CYCLES")
    samples: IntProperty(name="Samples", default=0, min=0, max=4096,
                         description="0: auto (Cycles 1, exact with a point pixel filter and no lights; EEVEE 8)")
    colours: EnumProperty(name="Colours", default="BACKEND", items=[
        ("BACKEND", "Like the backend", "sRGB values blended like gsplat, Raw view transform"),
        ("STANDARD", "Standard", "Linear colours, Standard view transform (for scenes with lit objects)")])
    filepath: StringProperty(name="File", subtype="FILE_PATH", description="PNG to write")
    avatar: StringProperty(name="Avatar", description="Avatar object (empty: active or last imported)")

    def execute(self, context):
        obj = _avatar(context, self.avatar)
        if not avatarmod.is_avatar(obj):
            self.report({"ERROR"}, "No avatar to render - import one (or pass avatar=NAME)")
            return {"CANCELLED"}
        cam = bpy.data.objects.get(self.camera) if self.camera else context.scene.camera
        if cam is None or cam.type != "CAMERA":
            self.report({"ERROR"}, f"No camera named '{self.camera}' - pass camera=NAME of a camera object")
            return {"CANCELLED"}
        if not self.filepath:
            self.report({"ERROR"}, "Pass filepath=... (the PNG to write)")
            return {"CANCELLED"}
        path = Path(bpy.path.abspath(self.filepath))
        try:
            out = render.render_avatar(context.scene, obj, cam, self.frame, self.resolution, self.engine, path,
                                       self.samples, self.colours)
        except (OSError, RuntimeError) as e:
            self.report({"ERROR"}, f"Render to {path} failed: {e}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Rendered {out}")
        return {"FINISHED"}


CLASSES = (MVP4D_OT_import_avatar, MVP4D_OT_export_avatar, MVP4D_OT_render_avatar)
