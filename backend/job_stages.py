"""The job's stages in order (:data:`STAGES`): ``track`` (reference photo → FLAME + camera) and ``corpus``
(multi-view videos) here, ``fit`` and ``export`` in :mod:`backend.avatar.fit_export_stages`.

Each stage reads the spec and the previous stages' folders, writes its own ``stages/<name>/`` and
returns its outputs; :mod:`backend.jobs` runs them, skips finished ones and reports events.

``stages/corpus/`` layout (read by the fitting stage and by the add-on's preview):

==========================  ====================================================================
``corpus.json``             views (name, folder, key flag, azimuth/elevation), frames, fps,
                            resolution, key views, clusters, generator
``cameras.json``            one ``protocol.CameraSpec`` per view, in view order
``animation.npz``           the FLAME parameters of every frame (``FlameParams.save_npz``)
``reference/``              ``image.png`` (the matted reference crop), ``camera.json``, ``outcrop.png``
``views/<name>/NNNN.png``   each view's frames; a view folder appears only once complete
==========================  ====================================================================
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from .animation import job_animation
from .cameras import Camera, CameraRing, ring_preset
from .conditioning.crop import CROP_SCALE, crop_camera, crop_image, face_crop_boxes
from .errors import bad_input
from .flame.io import load_flame
from .flame.lbs import Flame, FlameParams
from .fsutil import atomic_dir, atomic_path, write_json_atomic
from .generators import build_generator
from .stage_context import Stage, StageContext, stage_dir
from .jobpaths import confine
from .preview import contact_sheet
from .protocol import JobSpec
from .tracking import load_track, track_from_params, track_image
from .tracking.image import load_image, save_png_atomic

PREVIEW_NAME = "outputs/corpus_preview.png"


def _flame(ctx: StageContext) -> Flame:
    if "flame" not in ctx.cache:
        ctx.cache["flame"] = Flame(load_flame(ctx.spec.inputs.flame_model))
    return ctx.cache["flame"]


# ---------------------------------------------------------------------------------------------
# track
# ---------------------------------------------------------------------------------------------


def run_track(ctx: StageContext) -> dict[str, str]:
    spec, flame = ctx.spec, _flame(ctx)
    image = ctx.path(spec.inputs.reference_image)
    if spec.inputs.flame_params:
        track_from_params(ctx.path(spec.inputs.flame_params), spec.inputs.reference_camera, image=image,
                          flame_source=flame, out_dir=ctx.stage_dir)
    else:
        res = track_image(image, flame_source=flame, out_dir=ctx.stage_dir, warn=ctx.warn,
                          progress=ctx.progress, check=ctx.cancel.check)
        ctx.sink.log(f"landmark error {res.mean_error_px:.2f} px ({100 * res.relative_error:.2f} % of the face box)",
                     stage=ctx.stage)
    return {"track": "stages/track"}


# ---------------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------------


def head_bounds(flame: Flame, shape: torch.Tensor) -> tuple[np.ndarray, float]:
    """Centre and largest extent (metres) of the head proper, neutral pose, with this identity."""
    with torch.no_grad():
        v = flame.neutral_vertices(shape).cpu().numpy().reshape(-1, 3)
    mask = flame.model.head_mask()
    head = v[mask] if mask is not None and mask.any() else v
    lo, hi = head.min(0), head.max(0)
    return (lo + hi) / 2.0, float((hi - lo).max())


def build_ring(spec: JobSpec, reference: Camera, center: np.ndarray, extent: float) -> CameraRing:
    """The job's camera ring: explicit cameras from the spec, or the preset's ring framed on the head.

    Preset rings sit at the photo's camera distance (similar perspective) and are framed like the
    paper's face crop: the head spans 1 / CROP_SCALE of the image.
    """
    if spec.cameras.cameras:
        return CameraRing.from_cameras([Camera.from_spec(c) for c in spec.cameras.cameras])
    res = spec.resolution
    distance = float(np.clip(np.linalg.norm(reference.center - center), 0.3, 5.0))
    focal = res * distance / (CROP_SCALE * extent)
    return ring_preset(spec.cameras.preset, center=center, distance=distance, focal_px=focal, resolution=res)


def reference_crop(
    flame: Flame, params: FlameParams, camera: Camera, matted: np.ndarray, size: int,
) -> tuple[np.ndarray, Camera, np.ndarray]:
    """The paper's reference input: the matted photo cropped around the projected head (white pad)."""
    with torch.no_grad():
        verts = flame(params).vertices
    box = face_crop_boxes(camera, verts, flame.model.head_mask(), scale=CROP_SCALE)[0]
    crop, outcrop = crop_image(matted, box, size)
    return crop, crop_camera(camera, box, size), outcrop


def run_corpus(ctx: StageContext) -> dict[str, str]:
    spec, flame = ctx.spec, _flame(ctx)
    track = load_track(stage_dir(ctx.job_dir, "track"), flame_source=flame)
    matted = track.matted if track.matted is not None else load_image(ctx.path(spec.inputs.reference_image))
    num_frames, res = spec.num_frames, spec.resolution

    seq = job_animation(spec.animation.source, ctx.job_dir, flame.model, num_frames, track.params.shape, ctx.warn)
    with torch.no_grad():
        vertices = flame(seq).vertices
    if not torch.isfinite(vertices).all():
        raise bad_input("the animation produces non-finite vertices (NaN or inf parameters)",
                        "Check the animation file's values.")
    center, extent = head_bounds(flame, track.params.shape)
    ring = build_ring(spec, track.camera, center, extent)

    frames = None  # cap4d: the animation frames its image budget allows (the corpus holds only those)
    if spec.generator.name == "cap4d":
        from .generators.cap4d import CAP4DSettings, cap4d_frames

        frames = cap4d_frames(num_frames, len(ring), CAP4DSettings.from_spec(spec.generator, spec.cameras.preset).quality)
    crop, crop_cam, outcrop = reference_crop(flame, track.params, track.camera, matted, res)
    at = lambda rel: ctx.path(f"stages/corpus/{rel}")  # noqa: E731 - every path through the confinement
    save_png_atomic(at("reference/image.png"), crop)
    save_png_atomic(at("reference/outcrop.png"), (outcrop * 255).astype(np.uint8))
    write_json_atomic(at("reference/camera.json"), crop_cam.to_spec().__dict__)
    with atomic_path(at("animation.npz")) as tmp:
        _corpus_animation(seq, frames).save_npz(tmp)
    write_json_atomic(at("cameras.json"), [c.to_spec().__dict__ for c in ring.cameras])
    write_json_atomic(at("corpus.json"), _manifest(spec, ring, num_frames if frames is None else len(frames)))

    views = at("views")
    views.mkdir(exist_ok=True)
    if spec.generator.name == "mmvdm":
        _run_mmvdm(ctx, ring, vertices, flame, seq, track.params, crop_cam, crop, outcrop)
    elif frames is not None:
        _run_cap4d(ctx, ring, flame, seq, frames, track.params, track.camera, matted)
    else:
        _run_per_view(ctx, ring, vertices, flame, track, matted)
    sheet = contact_sheet(
        lambda v, f: load_image(confine(views, "", ring.cameras[v].name, f"{f:04d}.png", where="camera name")),
        len(ring), num_frames if frames is None else len(frames), key_views=ring.key_indices,
    )
    save_png_atomic(ctx.path(PREVIEW_NAME), sheet)
    ctx.sink.preview(PREVIEW_NAME, stage=ctx.stage)
    return {"corpus": "stages/corpus", "corpus_preview": PREVIEW_NAME}


def _run_mmvdm(ctx: StageContext, ring: CameraRing, vertices: torch.Tensor, flame: Flame, seq: FlameParams,
               ref_params: FlameParams, crop_cam: Camera, crop: np.ndarray, outcrop: np.ndarray) -> None:
    """The paper's plan: passes checkpointed under ``stages/corpus/mmvdm/`` (resume skips finished ones)."""
    from .generators.mmvdm import MMVDMGenerator

    gen = MMVDMGenerator.from_spec(ctx.spec.generator)  # WEIGHTS_MISSING/MISMATCH before any work
    gen.generate(ring, vertices, flame, seq, ref_params, crop_cam, crop, out_views_dir=ctx.path("stages/corpus/views"),
                 state_dir=ctx.path("stages/corpus/mmvdm"), progress=ctx.progress, check=ctx.cancel.check,
                 log=lambda m: ctx.sink.log(m, stage=ctx.stage), ref_outcrop=outcrop)


def _corpus_animation(seq: FlameParams, frames: list[int] | None) -> FlameParams:
    if frames is None:
        return seq
    from .generators.cap4d import select_frames

    return select_frames(seq, frames)


def _run_cap4d(ctx: StageContext, ring: CameraRing, flame: Flame, seq: FlameParams, frames: list[int],
               ref_params: FlameParams, ref_camera: Camera, matted: np.ndarray) -> None:
    """CAP4D's MMDM: latents checkpointed under ``stages/corpus/cap4d/`` (resume only decodes)."""
    from .generators.cap4d import CAP4DGenerator, CAP4DSettings

    gen = CAP4DGenerator(ctx.spec.generator.weights, CAP4DSettings.from_spec(ctx.spec.generator, ctx.spec.cameras.preset))
    gen.generate(ring, flame, seq, frames, ref_params, ref_camera, matted, out_views_dir=ctx.stage_dir / "views",
                 state_dir=ctx.stage_dir / "cap4d", progress=ctx.progress, check=ctx.cancel.check,
                 log=lambda m: ctx.sink.log(m, stage=ctx.stage))


def _run_per_view(ctx: StageContext, ring: CameraRing, vertices: torch.Tensor, flame: Flame, track: Any,
                  matted: np.ndarray) -> None:
    """Generators that render view by view (projection): each view folder appears only once complete."""
    with torch.no_grad():
        ref_vertices = flame(track.params).vertices[0]
    generator = build_generator(ctx.spec.generator, faces=flame.model.faces, reference_vertices=ref_vertices,
                                reference_camera=track.camera, reference_image=matted)
    views = ctx.path("stages/corpus/views")
    folder = {c.name: confine(views, "", c.name, where=f"camera name {c.name!r}") for c in ring.cameras}
    finished = [c.name for c in ring.cameras if folder[c.name].is_dir()]
    if finished:
        ctx.sink.log(f"resuming: {len(finished)} of {len(ring)} views already done", stage=ctx.stage)
    ctx.progress(len(finished), len(ring))
    for i, cam in enumerate(ring.cameras):
        if folder[cam.name].is_dir():
            continue
        ctx.cancel.check()
        frames = generator.render(vertices, cam, check=ctx.cancel.check)
        with atomic_dir(folder[cam.name]) as tmp:
            for f, img in enumerate(frames):  # the folder as a whole is atomic
                Image.fromarray(img).save(tmp / f"{f:04d}.png", compress_level=1)
        finished.append(cam.name)
        ctx.progress(len(finished), len(ring))


def _manifest(spec: JobSpec, ring: CameraRing, num_frames: int) -> dict[str, Any]:
    ae = ring.azimuth_elevation
    return {
        "views": [
            {"name": c.name, "dir": f"views/{c.name}", "key": i in ring.key_indices,
             "azimuth": None if ae is None else float(ae[i][0]),
             "elevation": None if ae is None else float(ae[i][1])}
            for i, c in enumerate(ring.cameras)
        ],
        "num_frames": num_frames,
        "fps": spec.animation.fps,
        "resolution": spec.resolution,
        "frame_pattern": "{frame:04d}.png",
        "key_indices": list(ring.key_indices),
        "clusters": [list(c) for c in ring.clusters],
        "cluster_keys": [list(c) for c in ring.cluster_keys],
        "generator": spec.generator.name,
    }


def _fit_stages() -> list[Stage]:
    from .avatar.fit_export_stages import run_export, run_fit

    return [Stage("fit", run_fit), Stage("export", run_export)]


STAGES: list[Stage] = [Stage("track", run_track), Stage("corpus", run_corpus), *_fit_stages()]

__all__ = ["STAGES", "run_track", "run_corpus", "build_ring", "head_bounds", "reference_crop"]
