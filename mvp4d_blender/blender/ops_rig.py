"""Operators of the rig, camera ring and animation panels."""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
from bpy.props import EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from .. import backend_link
from ..io.flame import FlameFileError
from ..io.jobs import JobError
from . import camera_objects as camops, common, jobspec, models, rig as rigmod, rig_params
from .props import RING_ITEMS


class MVP4D_OT_add_rig(bpy.types.Operator):
    """Add a FLAME head rig (mesh with expression shape keys + neck/jaw/eye armature)"""

    bl_idname = "mvp4d.add_rig"
    bl_label = "Add FLAME rig"
    bl_options = {"REGISTER", "UNDO"}
    source: EnumProperty(name="Model", items=[
        ("AUTO", "From preferences", "The FLAME file set in the preferences, else the toy head"),
        ("TOY", "Toy head", "The embedded procedural head (no download, any licence)"),
        ("FLAME", "FLAME file", "The FLAME file set in the preferences")], default="AUTO")
    name: StringProperty(name="Name", default="FLAME")

    def execute(self, context):
        src = common.flame_source()
        if self.source == "TOY" or (self.source == "AUTO" and src == "toy"):
            src = "toy"
        elif src == "toy":
            self.report({"ERROR"}, "No FLAME file is set - set it in the MVP4D preferences, or add the toy head")
            return {"CANCELLED"}
        try:
            npz = models.model_npz(src)
            model = models.load_model(npz)
        except JobError as e:
            self.report({"ERROR"}, f"{e.message}" + (f" - {e.hint}" if e.hint else ""))
            return {"CANCELLED"}
        except FlameFileError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        rig = rigmod.build_rig(model, name=self.name, source=src, model_npz=str(npz))
        context.scene.mvp4d.rig = rig
        for o in context.view_layer.objects:
            o.select_set(False)
        rig.select_set(True)
        context.view_layer.objects.active = rig
        self.report({"INFO"}, f"Added '{rig.name}' ({model.model_id}: {model.num_expr} expressions)")
        return {"FINISHED"}


class MVP4D_OT_add_camera_ring(bpy.types.Operator):
    """Add a ring of cameras around the rig's head (key views drawn larger, in 'Key views')"""

    bl_idname = "mvp4d.add_camera_ring"
    bl_label = "Add camera ring"
    bl_options = {"REGISTER", "UNDO"}
    preset: EnumProperty(name="Ring", items=[("SCENE", "Scene", "")] + RING_ITEMS, default="SCENE")
    # unset arguments mean "the scene's setting" (is_property_set), so no placeholder value ever shows
    count: IntProperty(name="Views", default=8, min=1, max=128)
    azimuth_range: FloatProperty(name="Azimuth range", default=120.0, min=0.0, max=360.0)
    elevation: FloatProperty(name="Elevation", default=0.0, min=-89.0, max=89.0)
    distance: FloatProperty(name="Distance (0 = auto)", default=0.0, min=0.0, soft_max=5.0, unit="LENGTH",
                            description="Camera distance from the head; 0: the photo's camera distance, else 1 m")
    rig: StringProperty()

    @classmethod
    def poll(cls, context):
        if not rigmod.is_rig(context.scene.mvp4d.rig):
            cls.poll_message_set("Add or pick a FLAME rig first")
            return False
        return True

    def execute(self, context):
        m = context.scene.mvp4d
        try:
            rig = jobspec.resolve_rig(self.rig, context.scene)
        except jobspec.InputError as e:
            self.report({"ERROR"}, f"{e.message} - {e.hint}")
            return {"CANCELLED"}
        preset = m.ring_preset if self.preset == "SCENE" else self.preset
        proto = backend_link.protocol()
        res = proto.PRESETS[preset].resolution if preset in proto.PRESETS else proto.PRESETS[m.preset].resolution
        given = self.properties.is_property_set
        distance = self.distance if given("distance") else m.ring_distance
        if distance <= 0:
            distance = _reference_distance(rig) or 1.0
        coll = camops.add_ring(
            context, rig, preset=preset, resolution=res, distance=distance,
            count=self.count if given("count") else m.ring_count,
            azimuth_range=self.azimuth_range if given("azimuth_range") else m.ring_azimuth,
            elevation=self.elevation if given("elevation") else m.ring_elevation, model=models.model_of_rig(rig))
        m.cameras = coll
        n = len(camops.collection_cameras(coll))
        self.report({"INFO"}, f"Added {n} cameras ({preset}) at {distance:.2f} m")
        return {"FINISHED"}


def _reference_distance(rig) -> float | None:
    """Like the backend: the ring sits at the photo's camera distance (clipped to 0.3..5 m)."""
    cam = rig.get("mvp4d_reference_camera") if rig is not None else None
    if cam is None:
        return None
    frame = camops.rig_frame(rig)
    spec = camops.read_camera(cam, frame, int(cam.get("mvp4d_width", 512)), int(cam.get("mvp4d_height", 512)))
    center = -spec.world_to_cam[:3, :3].T @ spec.world_to_cam[:3, 3]
    model = models.model_of_rig(rig)
    head = model.head_bounds(np.asarray(rig.get("mvp4d_shape", [])))[0] if model is not None else np.zeros(3)
    return float(np.clip(np.linalg.norm(center - head), 0.3, 5.0))


class MVP4D_OT_import_sequence(bpy.types.Operator, ImportHelper):
    """Key the rig with a driving sequence: an .npz of FLAME parameters (expr, jaw_pose, ...)"""

    bl_idname = "mvp4d.import_sequence"
    bl_label = "Import driving sequence"
    bl_options = {"REGISTER", "UNDO"}
    filename_ext = ".npz"
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})
    rig: StringProperty()

    def execute(self, context):
        proto = backend_link.protocol()
        try:
            rig = jobspec.resolve_rig(self.rig, context.scene)
            seq = read_sequence_npz(Path(self.filepath), proto.ANIMATION_KEYS, len(rigmod.expression_names(rig)))
        except jobspec.InputError as e:
            self.report({"ERROR"}, f"{e.message}" + (f" - {e.hint}" if e.hint else ""))
            return {"CANCELLED"}
        m = context.scene.mvp4d
        start = context.scene.frame_start
        T = rig_params.keyframe_sequence(rig, seq, start)
        rig["mvp4d_keyed_by_import"] = False  # the artist's animation now: an avatar import keeps it
        m.frame_start, m.frame_end, m.animation_source = start, start + T - 1, "RIG"
        context.scene.frame_end = max(context.scene.frame_end, start + T - 1)
        self.report({"INFO"}, f"Keyed {T} frames on '{rig.name}'")
        return {"FINISHED"}


def read_sequence_npz(path: Path, keys: dict, num_expr: int) -> dict[str, np.ndarray]:
    """An animation .npz (``protocol.ANIMATION_KEYS``) checked like the backend checks it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: np.asarray(z[k], np.float64) for k in z.files}
    except Exception as e:  # noqa: BLE001
        raise jobspec.InputError(f"{path.name} is not a readable .npz ({type(e).__name__})",
                                 "Pick an .npz of FLAME parameters.") from e
    if "expr" not in data or data["expr"].ndim != 2:
        raise jobspec.InputError(f"{path.name}: 'expr' (T, E) is missing", "Every driving sequence needs 'expr'.")
    T, E = data["expr"].shape
    if E > num_expr:
        raise jobspec.InputError(f"{path.name}: expr has {E} components, the rig has {num_expr}",
                                 "Use a sequence made for this head model.")
    sizes = {"jaw_pose": 3, "neck_pose": 3, "eye_pose": 6, "global_rot": 3, "transl": 3}
    out = {"expr": data["expr"]}
    for k, n in sizes.items():
        a = data.get(k, np.zeros((T, n)))
        if a.shape != (T, n):
            raise jobspec.InputError(f"{path.name}: {k} has shape {a.shape}, expected ({T}, {n})")
        out[k] = a
    unknown = sorted(set(data) - set(keys) - {"shape"})
    if unknown:
        raise jobspec.InputError(f"{path.name}: unknown key {unknown[0]!r}", f"Known keys: {', '.join(keys)}.")
    for k, a in out.items():
        if not np.isfinite(a).all():
            raise jobspec.InputError(f"{path.name}: {k} holds non-finite values")
    return out


CLASSES = (MVP4D_OT_add_rig, MVP4D_OT_add_camera_ring, MVP4D_OT_import_sequence)
