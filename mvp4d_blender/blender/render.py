"""Render set-up that matches the backend's renderer, corpus cameras, and one-call renders of an avatar.

The backend (gsplat maths) composites every splat front to back until the transmittance is spent,
blends the colours' sRGB values as they are (no tone mapping), samples each pixel at its centre and
leaves the background transparent. The equivalent in Blender: a transparent film, enough transparent
bounces and no random cut-off of them (``min_transparent_bounces`` = max: the default random
termination speckles layered splats), emission only (no light bounces), a point pixel filter, the rig's
head mesh kept out of the render (drawn as wire in the viewport), and one of two colour set-ups:

* ``BACKEND`` (default): the splats emit their sRGB values and the view transform is *Raw*, so Cycles
  and EEVEE blend in the same space as gsplat (41.5 dB against ``backend render`` at 128^2, toy bundle);
* ``STANDARD``: linear colours and the *Standard* view transform (never AgX/Filmic, which re-tone),
  right when lit scene objects share the render; blending in linear light brightens partly covered
  pixels (31.8 dB on the same image).
"""

from __future__ import annotations

import os
from pathlib import Path

import bpy
import numpy as np

from ..io.camera_math import camera_from_spec
from . import camera_objects as camops, splat_mesh

#: layered quads a ray may pass through: every quad crossed counts, even where its Gaussian is faint
#: (measured: 32 -> 26.6 dB, 64 -> 31.8 dB, 128 -> 31.9 dB, 256 -> 31.9 dB, Standard colours)
TRANSPARENT_BOUNCES = 64
CORPUS_COLLECTION = "MVP4D Corpus Cameras"
#: EEVEE's dithered transparency needs samples: 1 -> 19.6 dB, 8 -> 29.4 dB against the backend (128^2)
EEVEE_SAMPLES = 8
ENGINES = {"CYCLES": "CYCLES", "EEVEE": None}  # EEVEE's id differs between versions: see eevee_engine()


def eevee_engine() -> str:
    """'BLENDER_EEVEE_NEXT' on 4.2-4.5, 'BLENDER_EEVEE' on 5.x."""
    items = bpy.types.RenderSettings.bl_rna.properties["engine"].enum_items.keys()
    return "BLENDER_EEVEE_NEXT" if "BLENDER_EEVEE_NEXT" in items else "BLENDER_EEVEE"


COLOUR_MODES = ("BACKEND", "STANDARD")


def setup_render(scene, rig=None, samples: int = 1, avatar=None, colours: str = "BACKEND") -> None:
    """Make ``scene`` render splats like the backend (see the module docstring)."""
    if colours not in COLOUR_MODES:
        raise ValueError(f"colours must be one of {', '.join(COLOUR_MODES)}, got {colours!r}")
    vs = scene.view_settings
    vs.view_transform = "Raw" if colours == "BACKEND" else "Standard"
    vs.look, vs.exposure, vs.gamma = "None", 0.0, 1.0
    scene.render.film_transparent = True
    scene.render.filter_size = 0.0  # EEVEE: no reconstruction blur (gsplat samples pixel centres)
    cy = scene.cycles
    cy.samples, cy.use_denoising = samples, False
    cy.pixel_filter_type, cy.filter_width = "GAUSSIAN", 0.01  # a point sample: one sample is exact
    cy.max_bounces = cy.diffuse_bounces = cy.glossy_bounces = cy.transmission_bounces = cy.volume_bounces = 0
    cy.transparent_max_bounces = cy.min_transparent_bounces = TRANSPARENT_BOUNCES
    scene.eevee.taa_render_samples = samples
    if rig is not None:
        rig.hide_render = True
        rig.display_type = "WIRE"
    if avatar is not None:
        splat_mesh.set_colour_space(avatar, colours == "BACKEND")


def add_corpus_cameras(context, rig, camera_ring: list[dict] | None):
    """The bundle's corpus cameras as Blender cameras named after the views (replacing earlier ones)."""
    if not camera_ring:
        return None
    coll = bpy.data.collections.get(CORPUS_COLLECTION)
    if coll is None:
        coll = bpy.data.collections.new(CORPUS_COLLECTION)
        context.scene.collection.children.link(coll)
    frame = camops.rig_frame(rig)
    for spec in camera_ring:
        cam = camera_from_spec(spec)
        obj = bpy.data.objects.get(cam.name)
        if obj is not None and obj.type == "CAMERA" and coll in obj.users_collection:
            data = obj.data
        else:
            data = bpy.data.cameras.new(cam.name)
            obj = bpy.data.objects.new(cam.name, data)
            coll.objects.link(obj)
        camops.apply_opencv(obj, cam, frame)
        data.display_size = 0.04
        obj[camops.KEY_PROP] = bool(cam.key)
    return coll


def render_avatar(scene, avatar, camera, frame: int, resolution: int, engine: str, filepath: str | Path,
                  samples: int = 0, colours: str = "BACKEND") -> Path:
    """Render bundle ``frame`` of ``avatar`` through ``camera`` into ``filepath`` (RGBA PNG).

    The image is square-or-not like the camera's own image (``mvp4d_width/height``), its longer side
    ``resolution`` pixels. Written next to the target first and moved in place, so a failed render
    leaves no partial file under the chosen name."""
    rig = avatar.get("mvp4d_rig")
    if samples <= 0:  # Cycles: one point sample is exact; EEVEE averages its dithered transparency
        samples = 1 if engine == "CYCLES" else EEVEE_SAMPLES
    setup_render(scene, rig, samples, avatar, colours)
    r = scene.render
    r.engine = "CYCLES" if engine == "CYCLES" else eevee_engine()
    if engine == "CYCLES":
        scene.cycles.device = "CPU"
    w, h = int(camera.get("mvp4d_width", resolution)), int(camera.get("mvp4d_height", resolution))
    s = resolution / max(w, h)
    r.resolution_x, r.resolution_y, r.resolution_percentage = max(1, round(w * s)), max(1, round(h * s)), 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    r.image_settings.file_format, r.image_settings.color_mode = "PNG", "RGBA"
    old_cam, old_frame = scene.camera, scene.frame_current
    old_facing = facing = None
    if splat_mesh.display_modifier(avatar) is not None:  # camera-facing splats, projected like gsplat's
        focal = camops.read_camera(camera, np.eye(4), r.resolution_x, r.resolution_y).K[0, 0]
        old_facing = (splat_mesh.get_display(avatar, "Camera"), splat_mesh.get_display(avatar, "Focal"))
        facing = (camera, float(focal))
        splat_mesh.set_display(avatar, Camera=facing[0], Focal=facing[1])
    scene.camera = camera
    scene.frame_set(int(avatar.get("mvp4d_first_frame", scene.frame_start)) + int(frame))
    target = Path(filepath)
    tmp = target.with_name(f".{target.stem}.rendering.png")
    try:
        r.filepath = str(tmp)
        bpy.ops.render.render(write_still=True)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
        scene.camera = old_cam
        if old_facing is not None:
            splat_mesh.set_display(avatar, Camera=old_facing[0], Focal=old_facing[1])
        scene.frame_set(old_frame)
    return target
