"""Generate Avatar, Fit rig to reference, Cancel and Resume.

``mvp4d.generate_avatar`` takes every input as a parameter (empty = the scene's setting), writes the
job folder, starts ``<backend python> -m backend run JOB`` and returns at once; the runtime timer
follows it. With ``wait=True``, and always under ``blender -b``, it blocks until the job ends and
returns FINISHED, or CANCELLED with the backend's message. A finished job's avatar bundle is imported
bound to the rig.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from .. import backend_link
from ..io.jobs import BackendProcess, JobError, write_job
from . import avatar as avatarmod, camera_objects as camops, common, jobspec, models, rig as rigmod, runtime, rig_params
from .props import GENERATOR_ITEMS, PRESET_ITEMS


def _bundle_of(outputs: dict[str, str], job_dir: Path) -> Path | None:
    for v in outputs.values():
        if v.endswith(".safetensors") and Path(v).is_file():
            return Path(v)
    p = job_dir / "outputs" / "avatar.safetensors"
    return p if p.is_file() else None


def finisher_for(kind: str, scene):
    scene_name = scene.name

    def finish_generate(job: runtime.RunningJob):
        sc = bpy.data.scenes.get(scene_name)
        bundle = _bundle_of(job.process.state.outputs, job.process.workdir)
        if bundle is None:
            return "INFO", f"the job finished up to '{job.process.state.stage}' (no avatar bundle yet)"
        rig = sc.mvp4d.rig
        obj, msgs = avatarmod.import_avatar(bpy.context, str(bundle), rig)
        sc.mvp4d.last_avatar = obj
        return "INFO", f"Imported {obj.name}" + (f" ({'; '.join(msgs)})" if msgs else "")

    def finish_fit(job: runtime.RunningJob):
        sc = bpy.data.scenes.get(scene_name)
        return "INFO", apply_fit(bpy.context, sc.mvp4d.rig, job.process.workdir)

    return finish_fit if kind == "fit" else finish_generate


runtime.register_finishers(finisher_for)


def apply_fit(context, rig, track_dir: Path) -> str:
    """Set the rig's identity, expression and pose from a track folder, and the reference camera."""
    if not rigmod.is_rig(rig):
        raise JobError("BAD_INPUT", "the rig was removed while fitting", "Add a rig and fit again.")
    with np.load(track_dir / "flame_params.npz", allow_pickle=False) as z:
        params = {k: np.asarray(z[k]) for k in z.files}
    spec = json.loads((track_dir / "camera.json").read_text(encoding="utf-8"))
    model = models.model_of_rig(rig)
    if model is None:
        raise JobError("BAD_INPUT", "the rig's head model file is missing", "Add the FLAME rig again.")
    shape = params.get("shape", np.zeros(0))
    rigmod.set_identity(rig, model.shaped(shape), shape, model=model)
    rig_params.set_parameters(rig, params)
    cam = camops.reference_camera_from_json(context, rig, spec)
    rig["mvp4d_fitted"] = 1
    rig["mvp4d_reference_camera"] = cam
    rig["mvp4d_reference"] = json.dumps({k: np.asarray(v).reshape(-1).tolist() for k, v in params.items()
                                         if k in ("expr", "jaw_pose", "neck_pose", "eye_pose", "global_rot", "transl")})
    return f"Fitted '{rig.name}' to the reference; camera '{cam.name}' shows the photo's view"


def _start(op, context, process: BackendProcess, kind: str, wait: bool):
    job = runtime.start(process, kind, context.scene, finisher_for(kind, context.scene))
    if not (wait or bpy.app.background):
        op.report({"INFO"}, f"Started ({process.workdir})")
        return {"FINISHED"}
    level, message = runtime.wait(job)
    op.report({level}, message)
    return {"FINISHED"} if level == "INFO" else {"CANCELLED"}


def _fail(op, context, code: str, message: str, hint: str = ""):
    m = context.scene.mvp4d
    m.status, m.last_error, m.last_hint = "FAILED", f"[{code}] {message}", hint
    op.report({"ERROR"}, f"{message}" + (f" - {hint}" if hint else ""))
    return {"CANCELLED"}


def _new_job_dir(prefix: str) -> Path:
    return common.user_dir("jobs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1000) % 1000:03d}"


class MVP4D_OT_generate_avatar(bpy.types.Operator):
    """Generate a 4D avatar from the reference image, rig and camera ring (runs the backend)"""

    bl_idname = "mvp4d.generate_avatar"
    bl_label = "Generate Avatar"

    image: StringProperty(name="Image", subtype="FILE_PATH", description="Reference image (empty: the scene's)")
    rig: StringProperty(name="Rig", description="FLAME rig head mesh (empty: the scene's)")
    cameras: StringProperty(name="Cameras", description="Camera collection (empty: the scene's or the preset ring)")
    generator: EnumProperty(name="Generator", items=[("SCENE", "Scene", "")] + GENERATOR_ITEMS, default="SCENE")
    preset: EnumProperty(name="Quality", items=[("SCENE", "Scene", "")] + PRESET_ITEMS, default="SCENE")
    animation: EnumProperty(name="Animation", items=[("SCENE", "Scene", ""), ("BUILTIN", "Built-in", ""),
                                                     ("RIG", "Rig keyframes", "")], default="SCENE")
    frame_start: IntProperty(name="Start", default=1, description="First frame (unset: the scene's setting)")
    frame_end: IntProperty(name="End", default=17, description="Last frame (unset: the scene's setting)")
    output_dir: StringProperty(name="Output", subtype="DIR_PATH", description="Job folder (empty: a new one)")
    wait: BoolProperty(name="Wait", default=False, description="Block until the job ends")
    stop_after: StringProperty(name="Stop after stage", default="", options={"HIDDEN"},
                               description="Stop after this stage (e.g. 'corpus')")

    @classmethod
    def poll(cls, context):
        return runtime.poll_no_job(cls)

    def execute(self, context):
        scene, m = context.scene, context.scene.mvp4d
        proto = backend_link.protocol()
        animation = m.animation_source if self.animation == "SCENE" else self.animation
        frame_start = self.frame_start if self.properties.is_property_set("frame_start") else m.frame_start
        frame_end = self.frame_end if self.properties.is_property_set("frame_end") else m.frame_end
        try:
            image = jobspec.resolve_image(self.image, scene)
            rig = jobspec.resolve_rig(self.rig, scene)
            coll = jobspec.resolve_cameras(self.cameras, scene)
            spec, anim, params = jobspec.build_spec(
                scene, rig, coll, generator=m.generator if self.generator == "SCENE" else self.generator,
                preset=m.preset if self.preset == "SCENE" else self.preset, seed=m.seed,
                animation=animation, frame_start=frame_start, frame_end=frame_end)
        except jobspec.InputError as e:
            return _fail(self, context, "BAD_INPUT", e.message, e.hint)
        out = self.output_dir or m.output_dir
        job_dir = Path(bpy.path.abspath(out)) if out else _new_job_dir("avatar")
        m.rig = rig
        try:
            write_job(job_dir, proto, image=image, spec=spec, animation=anim, flame_params=params)
            args = ["run", str(job_dir)] + (["--until", self.stop_after] if self.stop_after else [])
            args += common.executor_args()
            process = _launch(args, job_dir, proto)
        except JobError as e:
            return _fail(self, context, e.code, e.message, e.hint)
        note = jobspec.length_warning(frame_start, frame_end) if animation == "RIG" else None
        if note:  # shown with the backend's warnings in the Generate panel, and reported now
            process.state.warnings.append(note)
            self.report({"WARNING"}, note)
        return _start(self, context, process, "generate", self.wait)


def _launch(args: list[str], workdir, proto) -> BackendProcess:
    """Start ``<backend python> -m backend ARGS`` with the preferences' interpreter, environment and timeout."""
    return BackendProcess(common.backend_python(), args, workdir=workdir, backend_root=backend_link.backend_root(),
                          proto=proto, env=common.backend_env(), hang_timeout_s=common.hang_timeout()).start()


class MVP4D_OT_fit_rig(bpy.types.Operator):
    """Fit the rig's identity, expression and pose to the reference photo (runs the backend's tracker)"""

    bl_idname = "mvp4d.fit_rig"
    bl_label = "Fit rig to reference"
    image: StringProperty(subtype="FILE_PATH")
    rig: StringProperty()
    wait: BoolProperty(default=False)

    @classmethod
    def poll(cls, context):
        return runtime.poll_no_job(cls)

    def execute(self, context):
        try:
            image = jobspec.resolve_image(self.image, context.scene)
            rig = jobspec.resolve_rig(self.rig, context.scene)
        except jobspec.InputError as e:
            return _fail(self, context, "BAD_INPUT", e.message, e.hint)
        out = _new_job_dir("fit")
        args = ["track", "--image", str(image), "--flame", rig.get("mvp4d_flame_source", "toy"), "--out", str(out)]
        context.scene.mvp4d.rig = rig
        try:
            process = _launch(args, out, backend_link.protocol())
        except JobError as e:
            return _fail(self, context, e.code, e.message, e.hint)
        return _start(self, context, process, "fit", self.wait)


class MVP4D_OT_cancel_job(bpy.types.Operator):
    """Stop the running job at its next safe point (Resume continues it later)"""

    bl_idname = "mvp4d.cancel_job"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return runtime.running(context.scene.mvp4d.job_dir) is not None

    def execute(self, context):
        runtime.cancel(context.scene.mvp4d.job_dir)
        self.report({"INFO"}, "Cancelling...")
        return {"FINISHED"}


class MVP4D_OT_resume_job(bpy.types.Operator):
    """Run the last job again; finished stages are not redone"""

    bl_idname = "mvp4d.resume_job"
    bl_label = "Resume"
    wait: BoolProperty(default=False)

    @classmethod
    def poll(cls, context):
        m = context.scene.mvp4d
        if not m.job_dir or not (Path(m.job_dir) / "job.json").is_file():
            cls.poll_message_set("No generate job to resume")
            return False
        return runtime.running(m.job_dir) is None and m.status in ("FAILED", "CANCELLED", "INTERRUPTED")

    def execute(self, context):
        m = context.scene.mvp4d
        try:
            process = BackendProcess(common.backend_python(), ["run", m.job_dir, *common.executor_args()],
                                     workdir=m.job_dir,
                                     backend_root=backend_link.backend_root(), proto=backend_link.protocol(),
                                     env=common.backend_env(), hang_timeout_s=common.hang_timeout()).start()
        except JobError as e:
            return _fail(self, context, e.code, e.message, e.hint)
        return _start(self, context, process, "generate", self.wait)


CLASSES = (MVP4D_OT_generate_avatar, MVP4D_OT_fit_rig, MVP4D_OT_cancel_job, MVP4D_OT_resume_job)
