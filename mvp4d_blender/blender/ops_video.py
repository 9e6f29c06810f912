"""Animation from video: track a performance clip with the backend and key the rig with it.

``mvp4d.animation_from_video(filepath=...)`` starts ``python -m backend track-video`` in a new folder of
the add-on's user folder and returns at once (the runtime timer shows progress; Cancel stops it; with
``wait=True``, and under ``blender -b``, it blocks). When the backend is done, :func:`apply_video_animation`
keys the rig's expression shape keys and bones from ``animation.npz`` into NEW actions, named after
the clip: the artist's current actions are kept (with a fake user, so saving the file keeps them).
The scene's animation source becomes the rig's keyframes over the clip's frames, so the next
Generate uses the performance and an imported avatar follows it at once.
"""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import BoolProperty, FloatProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from .. import backend_link
from ..io.jobs import JobError
from . import jobspec, rig as rigmod, rig_params, runtime
from .ops_generate import _fail, _launch, _new_job_dir
from .ops_rig import read_sequence_npz

VIDEO_FILTER = "*.mp4;*.mov;*.webm;*.mkv;*.avi;*.m4v"


def _new_action(id_data, name: str) -> None:
    """Detach ``id_data``'s current action (kept, with a fake user) so the next key makes a new one."""
    ad = id_data.animation_data
    if ad is not None and ad.action is not None:
        ad.action.use_fake_user = True
        ad.action = None
    id_data["mvp4d_next_action_name"] = name


def _name_new_action(id_data) -> None:
    name = id_data.get("mvp4d_next_action_name")
    ad = id_data.animation_data
    if name and ad is not None and ad.action is not None:
        ad.action.name = name
    if "mvp4d_next_action_name" in id_data:
        del id_data["mvp4d_next_action_name"]


def apply_video_animation(context, rig, out_dir: Path, clip_name: str, frame_start: int) -> str:
    """Key ``rig`` from ``out_dir/animation.npz`` into new actions from ``frame_start``; returns a message."""
    if not rigmod.is_rig(rig):
        raise JobError("BAD_INPUT", "the rig was removed while the video was tracked", "Add a rig and run it again.")
    proto = backend_link.protocol()
    try:
        seq = read_sequence_npz(out_dir / "animation.npz", proto.ANIMATION_KEYS, len(rigmod.expression_names(rig)))
    except jobspec.InputError as e:
        raise JobError("BAD_INPUT", e.message, e.hint) from e
    name = f"MVP4D {Path(clip_name).stem}"
    targets = [t for t in (rig.data.shape_keys, rig_params.armature_of(rig)) if t is not None]
    for t in targets:
        _new_action(t, name)
    T = rig_params.keyframe_sequence(rig, seq, frame_start)
    for t in targets:
        _name_new_action(t)
    rig["mvp4d_keyed_by_import"] = False  # the artist's animation now: an avatar import keeps it
    sc = context.scene
    m = sc.mvp4d
    m.frame_start, m.frame_end, m.animation_source = frame_start, frame_start + T - 1, "RIG"
    sc.frame_end = max(sc.frame_end, frame_start + T - 1)
    return f"Keyed {T} frames of '{Path(clip_name).name}' on '{rig.name}' (action '{name}')"


class MVP4D_OT_animation_from_video(bpy.types.Operator, ImportHelper):
    """Track a video of a performance (FLAME per frame) and key the rig with it, in a new action"""

    bl_idname = "mvp4d.animation_from_video"
    bl_label = "Animation from video"
    filter_glob: StringProperty(default=VIDEO_FILTER, options={"HIDDEN"})
    rig: StringProperty()
    fps: FloatProperty(name="Frame rate (0 = scene)", default=0.0, min=0.0, max=1000.0,
                       description="Output frame rate; 0: the scene's frame rate")
    start: FloatProperty(name="Start (s)", default=0.0, min=0.0, description="Trim: first second to track")
    end: FloatProperty(name="End (s, 0 = clip end)", default=0.0, min=0.0, description="Trim: second to stop at")
    smoothing: FloatProperty(name="Smoothing", default=1.0, min=0.0, soft_max=10.0,
                             description="Temporal smoothing: 0 none, 1 default, larger smoother")
    head_pose: BoolProperty(name="Head pose", default=True, description="Off: expressions only (no head motion)")
    neutral_frame: IntProperty(name="Neutral frame", default=0, min=0,
                               description="Clip frame with the performer's resting face, subtracted from all "
                                           "(unset: none; head pose then counts from looking into the lens)")
    frame_start: IntProperty(name="Start frame (0 = scene)", default=0, min=0)
    wait: BoolProperty(default=False, options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        return runtime.poll_no_job(cls)

    def execute(self, context):
        sc = context.scene
        try:
            rig = jobspec.resolve_rig(self.rig, sc)
        except jobspec.InputError as e:
            return _fail(self, context, "BAD_INPUT", e.message, e.hint)
        video = Path(bpy.path.abspath(self.filepath)) if self.filepath else None
        if video is None or not video.exists():
            return _fail(self, context, "BAD_INPUT", f"the video {self.filepath!r} does not exist",
                         "Pick a video file (mp4/mov/webm) or a folder of numbered frames.")
        fps = self.fps or sc.render.fps / sc.render.fps_base
        out = _new_job_dir("video")
        args = ["track-video", "--video", str(video), "--flame", rig.get("mvp4d_flame_source", "toy"),
                "--out", str(out), "--fps", f"{fps:g}", "--smoothing", f"{self.smoothing:g}"]
        if self.start > 0:
            args += ["--start", f"{self.start:g}"]
        if self.end > 0:
            args += ["--end", f"{self.end:g}"]
        if not self.head_pose:
            args.append("--no-head-pose")
        if self.properties.is_property_set("neutral_frame"):
            args += ["--neutral-frame", str(self.neutral_frame)]
        sc.mvp4d.rig = rig
        try:
            process = _launch(args, out, backend_link.protocol())
        except JobError as e:
            return _fail(self, context, e.code, e.message, e.hint)
        scene_name, frame_start, clip = sc.name, self.frame_start or sc.frame_start, video.name

        def finish(job: runtime.RunningJob):
            s = bpy.data.scenes.get(scene_name)
            return "INFO", apply_video_animation(bpy.context, s.mvp4d.rig, Path(job.process.workdir), clip, frame_start)

        job = runtime.start(process, "video", sc, finish)
        if not (self.wait or bpy.app.background):
            self.report({"INFO"}, f"Tracking {clip} ({out})")
            return {"FINISHED"}
        level, message = runtime.wait(job)
        self.report({level}, message)
        return {"FINISHED"} if level == "INFO" else {"CANCELLED"}


CLASSES = (MVP4D_OT_animation_from_video,)
