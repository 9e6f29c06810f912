"""The job stages ``fit`` (corpus -> ``outputs/avatar.safetensors``) and ``export`` (bundle -> PLYs).

``fit`` reads ``stages/track`` (the identity) and ``stages/corpus`` (views, cameras, animation), runs
:func:`backend.avatar.fit.fit_avatar` with the job's ``fit`` settings (``job.json``; the preset
defaults to the job's camera preset), checkpoints into ``stages/fit/`` (``fit.safetensors`` +
``fit.json``: a stopped job resumes from the last checkpoint) and writes the bundle. ``export``
writes ``outputs/avatar.ply`` (frame 0), ``outputs/frames/NNNN.ply``, ``outputs/avatar_animated.ply``
and a preview strip ``outputs/avatar_preview.png`` (ring views x frames, rendered from the bundle).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from ..cameras import Camera
from ..stage_context import StageContext, stage_dir
from ..protocol import CameraSpec
from ..threads import torch_threads
from .fit import FitResult, fit_avatar
from .settings import FitSettings

BUNDLE_NAME = "outputs/avatar.safetensors"
PLY_NAME = "outputs/avatar.ply"
FRAMES_NAME = "outputs/frames"
ANIMATED_NAME = "outputs/avatar_animated.ply"
PREVIEW_NAME = "outputs/avatar_preview.png"


def _flame(ctx: StageContext):
    # same cache key as backend.job_stages, so one run loads the head model once
    if "flame" not in ctx.cache:
        from ..flame.io import load_flame
        from ..flame.lbs import Flame

        ctx.cache["flame"] = Flame(load_flame(ctx.spec.inputs.flame_model))
    return ctx.cache["flame"]


def bundle_from_result(result: FitResult, metadata: dict[str, Any]):
    """An :class:`~backend.avatar.bundle.AvatarBundle` of a fit (dtypes cast to the contract)."""
    from .bundle import AvatarBundle

    t, p = result.tensors, result.params
    arrays = {
        "parent_face": t["parent_face"], "local_position": t["local_position"],
        "local_rotation": torch.nn.functional.normalize(t["local_rotation"], dim=-1), "log_scale": t["log_scale"],
        "opacity_logit": t["opacity_logit"], "sh": torch.cat([t["sh_dc"], t["sh_rest"]], 1)[:, : (result.sh_degree + 1) ** 2],
        "faces": result.faces, "rest_vertices": result.rest_vertices, "expr": p.expr, "jaw_pose": p.jaw_pose,
        "neck_pose": p.neck_pose, "eye_pose": p.eye_pose, "global_rot": p.global_rot, "transl": p.transl,
        "vertices": result.vertices, "detail_offsets": result.detail_offsets,
    }
    return AvatarBundle.build(arrays, metadata)


def run_fit(ctx: StageContext) -> dict[str, str]:
    from ..tracking import load_track
    from .bundle import write_bundle

    spec, flame = ctx.spec, _flame(ctx)
    track = load_track(stage_dir(ctx.job_dir, "track"), flame_source=flame)
    settings = FitSettings.from_json(spec.fit, default_preset=spec.cameras.preset)
    corpus_dir = stage_dir(ctx.job_dir, "corpus")
    result = _fit(ctx, corpus_dir, flame, track.params.shape, settings)
    gen = spec.generator
    metadata = {
        "fps": float(spec.animation.fps),
        "num_frames": int(result.vertices.shape[0]),
        "flame_model_id": str(flame.model_id or "unknown"),
        "camera_ring": json.loads((corpus_dir / "cameras.json").read_text(encoding="utf-8")),
        "generator": {"name": gen.name, "seed": gen.seed, "steps_key": gen.steps_key,
                      "steps_other": gen.steps_other, "guidance": gen.guidance},
        "settings": {**settings.to_json(), "result": _jsonable(result.stats)},
    }
    write_bundle(ctx.path(BUNDLE_NAME), bundle_from_result(result, metadata))
    ctx.sink.log(f"avatar: {result.num_gaussians} Gaussians, {result.iterations} iterations, "
                 f"training PSNR {result.stats.get('train_psnr') or float('nan'):.2f} dB", stage=ctx.stage)
    return {"avatar": BUNDLE_NAME, "fit": "stages/fit"}


def _fit(ctx: StageContext, corpus_dir, flame, shape: torch.Tensor, settings: FitSettings) -> FitResult:
    """The fit as a unit of its own: here (on ``executor.fit_device`` when set), or with the Ray executor
    and ``executor.fit_gpus`` > 0 as a Ray task with those GPUs, so that another job's generation can use
    the generation GPUs meanwhile. Either way it checkpoints into the fit stage's folder (resume)."""
    ex, log = ctx.spec.executor, (lambda m: ctx.sink.log(m, stage=ctx.stage))
    if ex.name == "ray" and ex.fit_gpus > 0:
        from ..executors import make_executor

        runner = make_executor(ex, cancel_file=ctx.job_dir / "cancel")
        try:  # the task's own GPU: its device is "auto" (Ray sets which GPUs the worker sees)
            return runner.run_call(fit_avatar, (corpus_dir, flame, shape, settings.replace(device="auto")),
                                   {"checkpoint_dir": ctx.stage_dir},
                                   unit="fit", gpus=ex.fit_gpus, progress=ctx.progress, check=ctx.cancel.check, log=log)
        finally:
            runner.close()
    if ex.fit_device:
        settings = settings.replace(device=ex.fit_device)
    return fit_avatar(corpus_dir, flame, shape, settings, progress=ctx.progress, check=ctx.cancel.check,
                      checkpoint_dir=ctx.stage_dir, log=log)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in d.items()
            if v is None or isinstance(v, (int, float, str, bool, np.floating))}


@torch.no_grad()
def render_bundle(bundle, camera: Camera, frame: int, background=(1.0, 1.0, 1.0), with_alpha: bool = False):
    """uint8 (H, W, 3) of a bundle's avatar at ``frame`` from ``camera`` (white background).

    With ``with_alpha``: float (H, W, 3) colour composited over ``background`` and (H, W, 1) alpha
    (``python -m backend render`` writes them as RGBA)."""
    from ..render.gaussians import rasterize
    from .binding import LocalGaussians, local_to_world

    f32 = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
    local = LocalGaussians(torch.from_numpy(bundle.parent_face.astype(np.int64)), f32(bundle.local_position),
                           f32(bundle.local_rotation), f32(bundle.log_scale), f32(bundle.opacity_logit), f32(bundle.sh))
    offsets = None if bundle.detail_offsets is None else f32(bundle.detail_offsets[frame])
    w = local_to_world(local, f32(bundle.vertices[frame]), torch.from_numpy(bundle.faces.astype(np.int64)), offsets)
    out = rasterize(w.means, w.quats, w.scales, w.opacities, w.sh, f32(camera.world_to_cam)[None], f32(camera.K)[None],
                    camera.width, camera.height, sh_degree=bundle.sh_degree, background=background)
    if with_alpha:
        return out.rgb[0].double().numpy(), out.alpha[0].double().numpy()
    return (out.rgb[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def preview_strip(bundle, max_views: int = 4, max_frames: int = 6) -> np.ndarray:
    """Contact sheet of the avatar: up to ``max_views`` ring views (key views first) x frames."""
    from ..preview import contact_sheet

    ring = [Camera.from_spec(CameraSpec.from_json(c, "camera_ring")) for c in bundle.metadata["camera_ring"]]
    order = [i for i, c in enumerate(ring) if c.key] + [i for i, c in enumerate(ring) if not c.key]
    views = [ring[i] for i in order[:max_views]]
    return contact_sheet(lambda v, f: render_bundle(bundle, views[v], f), len(views), bundle.num_frames,
                         max_columns=max_frames, key_views=[i for i, c in enumerate(views) if c.key])


def run_export(ctx: StageContext) -> dict[str, str]:
    from .bundle import read_bundle

    # the preview renders are small CPU ops: the fit's thread count (one on the CPU presets), 6x less CPU
    settings = FitSettings.from_json(ctx.spec.fit, default_preset=ctx.spec.cameras.preset)
    with torch_threads(settings.threads):
        return _export(ctx, read_bundle(ctx.path(BUNDLE_NAME)))


def _export(ctx: StageContext, bundle) -> dict[str, str]:
    from ..tracking.image import save_png_atomic
    from .export import export_cap4d_animated, export_ply, export_ply_sequence

    T = bundle.num_frames
    total = T + 3
    ctx.progress(0, total)
    export_ply(bundle, ctx.path(PLY_NAME), 0)
    ctx.progress(1, total)
    ctx.cancel.check()
    export_ply_sequence(bundle, ctx.path(FRAMES_NAME), progress=lambda d, _t: ctx.progress(1 + d, total))
    ctx.cancel.check()
    export_cap4d_animated(bundle, ctx.path(ANIMATED_NAME), warn=ctx.warn)
    ctx.progress(T + 2, total)
    save_png_atomic(ctx.path(PREVIEW_NAME), preview_strip(bundle))
    ctx.sink.preview(PREVIEW_NAME, stage=ctx.stage)
    ctx.progress(total, total)
    return {"avatar_ply": PLY_NAME, "avatar_frames": FRAMES_NAME, "avatar_animated": ANIMATED_NAME,
            "avatar_preview": PREVIEW_NAME}


__all__ = ["run_fit", "run_export", "bundle_from_result", "render_bundle", "preview_strip"]
