"""Per-scene settings and job status (``scene.mvp4d``), saved with the .blend.

The status fields mirror :class:`mvp4d_blender.io.jobs.JobState`; only the main-thread timer in
``generate.py`` writes them, so reopening a file shows the last job and can re-attach to it.
"""

from __future__ import annotations

import bpy
from bpy.props import (EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from .rig import is_rig

PRESET_ITEMS = [
    ("tiny", "Tiny", "CPU smoke test: 6 views x 5 frames at 64 px"),
    ("preview", "Preview", "Quick look on CPU: 12 views x 17 frames at 128 px"),
    ("120", "120 degrees", "The paper's 120-degree avatar: 32 views x 89 frames at 512 px"),
    ("360", "360 degrees", "The paper's 360-degree avatar: 48 views x 89 frames at 512 px"),
]
RING_ITEMS = PRESET_ITEMS + [("custom", "Custom", "An even ring: choose count, azimuth range and elevation")]
GENERATOR_ITEMS = [
    ("projection", "Projection (preview)", "Weights-free: the photo projected onto the fitted head"),
    ("mmvdm", "MMVDM", "The multi-view video diffusion model (needs its weights and a GPU)"),
    ("cap4d", "CAP4D (non-commercial)", "CAP4D's public diffusion model: needs its weights, the real FLAME and a "
     "GPU. Licence CC BY-NC 4.0 + OpenRAIL++: not for commercial use"),
]
ANIM_ITEMS = [
    ("BUILTIN", "Built-in", "The backend's default sequence (smile, jaw open, blink)"),
    ("RIG", "Rig keyframes", "The rig's expression and pose keyframes over the frame range"),
]
STATUS_ITEMS = [(s, s.title(), "") for s in ("IDLE", "RUNNING", "FINISHED", "FAILED", "CANCELLED", "INTERRUPTED")]


def _rig_poll(_self, obj) -> bool:
    return is_rig(obj)


class MVP4D_SceneSettings(bpy.types.PropertyGroup):
    image: PointerProperty(type=bpy.types.Image, name="Reference", description="The portrait to turn into an avatar")
    rig: PointerProperty(type=bpy.types.Object, name="Rig", poll=_rig_poll,
                         description="The FLAME head mesh (built with Add FLAME rig)")
    cameras: PointerProperty(type=bpy.types.Collection, name="Cameras", description="Collection of the camera ring")
    ring_preset: EnumProperty(name="Ring", items=RING_ITEMS, default="tiny")
    ring_count: IntProperty(name="Views", default=8, min=1, max=128)
    ring_azimuth: FloatProperty(name="Azimuth range", default=120.0, min=0.0, max=360.0, subtype="NONE")
    ring_elevation: FloatProperty(name="Elevation", default=0.0, min=-89.0, max=89.0)
    ring_distance: FloatProperty(name="Distance (0 = auto)", default=0.0, min=0.0, soft_max=5.0, unit="LENGTH",
                                 description="Camera distance from the head (0: like the photo, else 1 m)")
    animation_source: EnumProperty(name="Animation", items=ANIM_ITEMS, default="BUILTIN")
    frame_start: IntProperty(name="Start", default=1)
    frame_end: IntProperty(name="End", default=17)
    generator: EnumProperty(name="Generator", items=GENERATOR_ITEMS, default="projection")
    preset: EnumProperty(name="Quality", items=PRESET_ITEMS, default="tiny")
    seed: IntProperty(name="Seed", default=0, min=0)
    output_dir: StringProperty(name="Output", subtype="DIR_PATH",
                               description="Job folder (empty: a new folder in the add-on's user folder)")
    # status (written by the main-thread timer only)
    job_dir: StringProperty()
    job_kind: StringProperty(description="generate | fit")
    status: EnumProperty(items=STATUS_ITEMS, default="IDLE")
    stage: StringProperty()
    progress: FloatProperty(subtype="FACTOR", min=0.0, max=1.0)
    progress_text: StringProperty()
    eta: StringProperty()
    preview_path: StringProperty()
    last_error: StringProperty()
    last_hint: StringProperty()
    warnings: StringProperty(description="The running or last job's warnings, one per line (newest last)")
    last_avatar: PointerProperty(type=bpy.types.Object)


CLASSES = (MVP4D_SceneSettings,)


def register_props() -> None:
    bpy.types.Scene.mvp4d = PointerProperty(type=MVP4D_SceneSettings)


def unregister_props() -> None:
    del bpy.types.Scene.mvp4d
