"""The "MVP4D" sidebar tab: Reference, FLAME rig, Camera ring, Animation, Generate, Avatar.

Buttons that cannot run are shown disabled with the reason underneath (the operators' ``poll`` also
sets ``poll_message_set`` for the tooltip), so an artist always sees what is missing.
"""

from __future__ import annotations

from pathlib import Path

import bpy

from ..io.estimates import describe
from . import avatar as avatarmod, camera_objects as camops, common, rig as rigmod, runtime
from .compat import draw_modifier_input


def _button(layout, op: str, reason: str | None, **kw):
    """An operator button, disabled with ``reason`` written under it when it cannot run."""
    col = layout.column(align=True)
    row = col.row(align=True)
    row.enabled = reason is None
    props = row.operator(op, **kw)
    if reason:
        col.label(text=reason, icon="INFO")
    return props


class _Panel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "MVP4D"


class MVP4D_PT_reference(_Panel, bpy.types.Panel):
    bl_label = "Reference"
    bl_order = 0

    def draw(self, context):
        m, layout = context.scene.mvp4d, self.layout
        layout.template_ID(m, "image", open="image.open")
        if m.image is not None:
            m.image.preview_ensure()
            layout.template_icon(icon_value=m.image.preview.icon_id, scale=6.0)
        reason = None
        if m.image is None:
            reason = "Pick a portrait photo first"
        elif not rigmod.is_rig(m.rig):
            reason = "Add or pick a FLAME rig first"
        elif runtime.any_running():
            reason = "A job is running"
        _button(layout, "mvp4d.fit_rig", reason, icon="CON_TRACKTO")


class MVP4D_PT_rig(_Panel, bpy.types.Panel):
    bl_label = "FLAME rig"
    bl_order = 1

    def draw(self, context):
        m, layout = context.scene.mvp4d, self.layout
        layout.prop(m, "rig")
        src = common.flame_source()
        layout.operator("mvp4d.add_rig", icon="MONKEY").source = "AUTO"
        layout.label(text=f"Model: {'toy head (embedded)' if src == 'toy' else Path(src).name}")
        rig = m.rig
        if rigmod.is_rig(rig):
            col = layout.column(align=True)
            col.label(text=f"{rig.get('mvp4d_model_id', '?')}: {len(rigmod.expression_names(rig))} expressions"
                      + (", fitted" if rig.get("mvp4d_fitted") else ""))


class MVP4D_PT_cameras(_Panel, bpy.types.Panel):
    bl_label = "Camera ring"
    bl_order = 2

    def draw(self, context):
        m, layout = context.scene.mvp4d, self.layout
        layout.prop(m, "ring_preset")
        if m.ring_preset == "custom":
            col = layout.column(align=True)
            col.prop(m, "ring_count")
            col.prop(m, "ring_azimuth")
            col.prop(m, "ring_elevation")
        layout.prop(m, "ring_distance")
        _button(layout, "mvp4d.add_camera_ring", None if rigmod.is_rig(m.rig) else "Add or pick a FLAME rig first",
                icon="OUTLINER_OB_CAMERA")
        layout.prop(m, "cameras")
        if m.cameras is not None:
            cams = camops.collection_cameras(m.cameras)
            keys = sum(1 for c in cams if c.get(camops.KEY_PROP))
            layout.label(text=f"{len(cams)} cameras, {keys} key views" if cams else "The collection has no cameras",
                         icon="CHECKMARK" if cams else "ERROR")
        else:
            layout.label(text="No collection: the quality preset's ring is used")


class MVP4D_PT_animation(_Panel, bpy.types.Panel):
    bl_label = "Animation"
    bl_order = 3

    def draw(self, context):
        m, layout = context.scene.mvp4d, self.layout
        layout.prop(m, "animation_source", expand=True)
        row = layout.row(align=True)
        row.enabled = m.animation_source == "RIG"
        row.prop(m, "frame_start")
        row.prop(m, "frame_end")
        _button(layout, "mvp4d.import_sequence", None if rigmod.is_rig(m.rig) else "Add or pick a FLAME rig first",
                icon="ANIM")


def generate_blocker(context) -> str | None:
    m = context.scene.mvp4d
    if runtime.any_running():
        return None  # the Cancel button is shown instead
    if m.image is None:
        return "Pick a reference image (Reference panel)"
    if not rigmod.is_rig(m.rig):
        return "Add or pick a FLAME rig (FLAME rig panel)"
    if m.cameras is not None and not camops.collection_cameras(m.cameras):
        return "The camera collection is empty (Camera ring panel)"
    py = common.backend_python()
    if not py or not Path(py).is_file():
        return "No backend: set it in Preferences > Add-ons > MVP4D"
    if m.generator == "mmvdm" and not (common.prefs() and common.prefs().weights_dir):
        return "MMVDM needs its weights folder (Preferences)"
    if m.generator == "cap4d" and not (common.prefs() and common.prefs().cap4d_weights):
        return "CAP4D needs its weights (Preferences)"
    if m.generator == "cap4d" and m.rig.get("mvp4d_flame_source", "toy") == "toy":
        return "CAP4D needs the real FLAME model: set it in Preferences and add a FLAME rig"
    return None


class MVP4D_PT_generate(_Panel, bpy.types.Panel):
    bl_label = "Generate"
    bl_order = 4

    def draw(self, context):
        m, layout = context.scene.mvp4d, self.layout
        p = common.prefs()
        layout.prop(m, "generator")
        if m.generator == "cap4d":
            from .prefs import cap4d_licence_lines

            col = layout.column(align=True)
            for i, line in enumerate(cap4d_licence_lines(40)):
                col.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
        layout.prop(m, "preset")
        layout.label(text=describe(m.generator, m.preset, p.vram_preset if p else "MEDIUM"), icon="MEMORY")
        layout.prop(m, "output_dir")
        job = runtime.running(m.job_dir)
        if job is not None:
            layout.progress(factor=m.progress, text=f"{m.progress_text}  {m.eta}".strip())
            layout.operator("mvp4d.cancel_job", icon="CANCEL")
        else:
            _button(layout, "mvp4d.generate_avatar", generate_blocker(context), icon="PLAY")
            if m.status in ("FAILED", "CANCELLED", "INTERRUPTED") and m.job_kind != "fit":
                layout.operator("mvp4d.resume_job", icon="RECOVER_LAST")
        if m.status != "IDLE":
            layout.label(text=f"Status: {m.status.title()}" + (f" ({m.stage})" if m.stage else ""))
        img = bpy.data.images.get(runtime.PREVIEW_IMAGE)
        if img is not None and m.preview_path:
            layout.template_icon(icon_value=img.preview.icon_id, scale=8.0)
        for w in m.warnings.splitlines():  # the backend's warnings (e.g. an animation cut to length)
            layout.label(text=w[:120], icon="ERROR")
        if m.last_error:
            col = layout.column(align=True)
            col.alert = True
            col.label(text=m.last_error[:120], icon="ERROR")
            if m.last_hint:
                col.label(text=m.last_hint[:120], icon="QUESTION")


class MVP4D_PT_avatar(_Panel, bpy.types.Panel):
    bl_label = "Avatar"
    bl_order = 5

    def draw(self, context):
        layout = self.layout
        layout.operator("mvp4d.import_avatar", icon="IMPORT")
        obj = context.active_object if avatarmod.is_avatar(context.active_object) else context.scene.mvp4d.last_avatar
        if not avatarmod.is_avatar(obj):
            layout.label(text="Select an imported avatar to display or export it", icon="INFO")
            return
        layout.label(text=obj.name, icon="OUTLINER_OB_POINTCLOUD")
        mod = avatarmod.display_modifier(obj)
        if mod is not None:
            col = layout.column(align=True)
            for item in mod.node_group.interface.items_tree:
                if item.item_type == "SOCKET" and item.in_out == "INPUT" and item.name not in ("Geometry", "Material"):
                    draw_modifier_input(col, mod, item, item.name)
        col = layout.column(align=True)
        for fmt, label in (("PLY", "Export PLY (frame)"), ("PLY_SEQUENCE", "Export PLY per frame"),
                           ("GLB", "Export glTF (.glb)")):
            op = col.operator("mvp4d.export_avatar", text=label, icon="EXPORT")
            op.format, op.avatar = fmt, obj.name


CLASSES = (MVP4D_PT_reference, MVP4D_PT_rig, MVP4D_PT_cameras, MVP4D_PT_animation, MVP4D_PT_generate,
           MVP4D_PT_avatar)
