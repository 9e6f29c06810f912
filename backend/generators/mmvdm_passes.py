"""The pass executor of the MMVDM generator (:mod:`backend.generators.mmvdm`): inputs of one plan pass
(conditioning, clean reference/context latents, CFG scales, preview initialisation), checkpoints, frame
staging and the atomic output folders. Kept apart from the generator's settings/memory/loading code;
the behaviour is documented in :mod:`backend.generators.mmvdm`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as Fn
from PIL import Image

from ..conditioning.maps import HeadGeometry, head_geometry, reference_conditioning, video_conditioning
from ..errors import MVP4DError
from ..flame import FlameParams
from ..fsutil import atomic_dir, atomic_path
from ..jobpaths import confine
from ..mmvdm.plan import Pass
from ..mmvdm.guidance import guidance_scale, mode_masks
from ..mmvdm.guidance_angle import cfg_angle
from ..mmvdm.sampler import sample, upsample_latents
from ..mmvdm.schedule import _start_index

__all__ = ["PassRunner", "pass_seed", "run_mmvdm_pass"]


def pass_seed(seed: int, pass_id: str) -> int:
    """Deterministic 63-bit seed of one pass from the job seed and the pass id."""
    h = hashlib.sha256(f"mvp4d/{int(seed)}/{pass_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------


def _slice_params(params: FlameParams, start: int, stop: int) -> FlameParams:
    kw = {k: getattr(params, k)[start:stop] for k in ("expr", "global_rot", "neck_pose", "jaw_pose", "eye_pose", "transl")}
    return FlameParams(shape=params.shape, **kw)


def _to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(images)).float().div(127.5).sub(1.0)
    return t.movedim(-1, -3)


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3)."""
    x = ((frames.float().clamp(-1, 1) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def _downscale(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Area downscale of (..., 3, H, W) by an integer factor."""
    if factor == 1:
        return images
    lead, (c, h, w) = images.shape[:-3], images.shape[-3:]
    y = Fn.avg_pool2d(images.reshape(-1, c, h, w), factor)
    return y.reshape(*lead, c, h // factor, w // factor)


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _write_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", compress_level=1)


def _save_latents(path: Path, latents: torch.Tensor, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({"latents": latents.detach().float().cpu().contiguous()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in meta.items()})


def _load_latents(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["latents"]


def _decode_view(vae, latents: torch.Tensor) -> torch.Tensor:
    """``vae.decode_views`` for any latent count T: diffusers' CogVideoX decoder only decodes odd T
    correctly (chunks of 2 latents after an odd first chunk), so an even T is decoded with its last
    latent repeated and the 4 frames of the repeat dropped. Frames of the first chunk are unchanged;
    the last latent is normalised (GroupNorm over its chunk) together with its copy instead of with a
    neighbour — the closest to "decoded alone" the decoder allows."""
    T = latents.shape[1]
    if T % 2:
        return vae.decode_views(latents)
    padded = torch.cat([latents, latents[:, -1:]], dim=1)
    return vae.decode_views(padded)[:, : 1 + 4 * (T - 1)]


class PassRunner:
    """State of one generate() call: inputs, caches, progress."""

    def __init__(self, gen, ring, flame, params, ref_params, ref_camera, ref_image, ref_outcrop,
                 state_dir: Path, out_dir: Path, check, log, res: int):
        log = log or (lambda _m: None)
        self.g, self.s = gen, gen.settings
        self.ring, self.flame, self.params = ring, flame, params
        self.ref_params, self.ref_camera, self.ref_image, self.ref_outcrop = ref_params, ref_camera, ref_image, ref_outcrop
        self.state_dir, self.out_dir, self.check, self.log, self.res = state_dir, out_dir, check, log, res
        self.geometry = head_geometry(flame, params)
        self.ref_geometry = head_geometry(flame, ref_params)
        self.progress_total, self.progress_cb, self.done = 0, None, 0
        self._ref_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.executor: Any = None  # None: here, in plan order; else backend.executors' (e.g. Ray)
        #: what a worker elsewhere needs to build the same runner (see backend.executors.ray_executor)
        self.worker_args = dict(ring=ring, flame=flame, params=params, ref_params=ref_params, ref_camera=ref_camera,
                                ref_image=ref_image, ref_outcrop=ref_outcrop, state_dir=state_dir, out_dir=out_dir,
                                res=res)

    # -- bookkeeping -------------------------------------------------------------------------
    def pass_steps(self, tag: str, p: Pass) -> int:
        if tag == "final" and self.s.sampler == "preview":
            return p.steps - _start_index(p.steps, self.s.refine_strength)
        return p.steps

    def _progress(self, n: int) -> None:
        self.done += n
        if self.progress_cb is not None:
            self.progress_cb(self.done, self.progress_total)

    def ckpt(self, tag: str, p: Pass) -> Path:
        return self.state_dir / f"{'preview-' if tag == 'preview' else ''}{p.id}.safetensors"

    def frames_dir(self, tag: str) -> Path:
        return self.state_dir / ("preview_frames" if tag == "preview" else "frames")

    # -- inputs ---------------------------------------------------------------------------------
    def reference(self, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
        if factor not in self._ref_cache:
            img = _downscale(_to_unit(self.ref_image)[None], factor)
            self.g._use("vae")
            lat = self.g.vae.encode_reference(img)[0].cpu()
            cond = reference_conditioning(self.flame, self.ref_params, self.ref_camera, self.ref_outcrop,
                                          latent_downsample=8 * factor, geometry=self.ref_geometry).cpu()
            self._ref_cache[factor] = (lat, cond)
        return self._ref_cache[factor]

    def _source(self, tag: str, plan: list[Pass], p: Pass, view: int) -> tuple[Pass, int]:
        """The dependency of ``p`` that generated ``view`` over ``p``'s window (its row index)."""
        by_id = {q.id: q for q in plan}
        for d in p.depends_on:
            q = by_id[d]
            if view in q.views and q.window == p.window:
                return q, q.views.index(view)
        raise MVP4DError("INTERNAL", f"{p.id}: no dependency generated view {view} over {p.window}")

    def inputs(self, tag: str, plan: list[Pass], p: Pass, factor: int):
        ring, s = self.ring, self.s
        views = p.all_views
        R, T, C = len(p.reference_views), p.num_latent_frames, p.num_context_latent_frames
        mask = mode_masks(p.mode, len(views), T, R, C)
        ws, we = p.window
        params_w = _slice_params(self.params, ws, we)
        geo_w = HeadGeometry(self.geometry.vertices[ws:we], self.geometry.offsets[ws:we])
        cond = torch.stack([
            video_conditioning(self.flame, params_w, ring.cameras[v], self.ref_camera,
                               reference_frames=[k for k in range(T) if bool(mask[i, k])],
                               latent_downsample=8 * factor, geometry=geo_w).cpu()
            for i, v in enumerate(views)])
        ref_lat, ref_cond = self.reference(factor)
        h, w = cond.shape[-2:]
        clean = torch.zeros(len(views), T, ref_lat.shape[0], h, w)
        for i, v in enumerate(p.reference_views):
            q, row = self._source(tag, plan, p, v)
            clean[i] = _load_latents(self.ckpt(tag, q))[row]
        if p.context_frames:
            fdir = self.frames_dir(tag)
            imgs = np.stack([np.stack([_read_png(fdir / ring.cameras[v].name / f"{f:04d}.png") for f in p.context_frames])
                             for v in p.views])
            self.g._use("vae")
            clean[R:, :C] = self.g.vae.encode_views(_to_unit(imgs)).cpu()
        scales = []
        refs = [ring.cameras[r] for r in p.reference_views]
        for v in views:
            scales.append(guidance_scale(cfg_angle(ring.cameras[v], self.ref_camera, refs, ring.center,
                                                   s.cfg_angle)))
        init = None
        if tag == "final" and s.sampler == "preview":  # the dense preview pass of this window holds every view
            dense = self.state_dir / f"preview-w{p.window_index}-key.safetensors"
            init = upsample_latents(_load_latents(dense)[views], s.preview_factor)
        return dict(latents_shape=(len(views), T, ref_lat.shape[0], h, w), reference_latent=ref_lat,
                    conditioning=cond, reference_conditioning=ref_cond, clean_latents=clean, clean_mask=mask,
                    guidance_scale=scales, init_latents=init)

    # -- outputs --------------------------------------------------------------------------------
    def write_frames(self, tag: str, p: Pass, latents: torch.Tensor) -> None:
        """Decode the pass's own views (one at a time) and write its generated frames as PNGs."""
        fdir = self.frames_dir(tag)
        ws = p.window[0]
        for row, v in enumerate(p.views):
            name = self.ring.cameras[v].name
            paths = [confine(fdir, "", name, f"{f:04d}.png", where="camera name") for f in range(*p.frames)]
            if all(q.is_file() for q in paths):
                continue
            if self.check is not None:
                self.check()
            self.g._use("vae")
            frames = _to_uint8(_decode_view(self.g.vae, latents[row : row + 1])[0])
            for f, path in zip(range(*p.frames), paths):
                _write_png(path, frames[f - ws])

    def finish_views(self, tag: str, views: list[int], factor: int) -> None:
        F = self.params.num_frames
        fdir = self.frames_dir(tag)
        for v in views:
            name = self.ring.cameras[v].name
            view = confine(self.out_dir, "", name, where=f"camera name {name!r}")
            if view.is_dir():
                continue
            src = [confine(fdir, "", name, f"{f:04d}.png", where="camera name") for f in range(F)]
            if not all(q.is_file() for q in src):
                continue
            with atomic_dir(view) as tmp:
                for f, q in enumerate(src):
                    if factor == 1:
                        shutil.copyfile(q, tmp / q.name)
                    else:  # preview-only output: upsample the low-resolution frames to the ring's size
                        with Image.open(q) as im:
                            im.convert("RGB").resize((self.res, self.res), Image.BICUBIC).save(
                                tmp / q.name, format="PNG", compress_level=1)

    # -- a stage ------------------------------------------------------------------------------
    def run_stage(self, tag: str, plan: list[Pass], factor: int, output: bool) -> None:
        """The stage's passes: here in plan order (no executor, or the local one), or through the executor
        (Ray: units as tasks). The unit is :func:`run_mmvdm_pass` either way."""
        if self.executor is None:
            self.run_stage_here(tag, plan, factor, output)
        else:
            self.executor.run_mmvdm_stage(self, tag, plan, factor, output)

    def run_stage_here(self, tag: str, plan: list[Pass], factor: int, output: bool) -> None:
        """The passes in plan order (an executable order: dependencies first) in this process."""
        for p in plan:
            done0 = self.done
            run_mmvdm_pass(self, tag, plan, p, factor, progress=lambda d, base=done0: self._set_done(base + d))
            if output:
                self.finish_views(tag, p.views, factor)

    def _set_done(self, d: int) -> None:
        self.done = d
        if self.progress_cb is not None:
            self.progress_cb(self.done, self.progress_total)


# ---------------------------------------------------------------------------------------------
# the unit of work (one definition for every executor: backend/executors)
# ---------------------------------------------------------------------------------------------


def mmvdm_stage_sampler(settings: Any, tag: str) -> str:
    """The sampler of a stage's passes: the preview stage and the preview sampler's refinement are joint."""
    return "joint" if (tag == "preview" or settings.sampler == "preview") else settings.sampler


def run_mmvdm_pass(runner: PassRunner, tag: str, plan: list[Pass], p: Pass, factor: int,
                   progress: Any) -> bool:
    """One unit: pass ``p`` of ``plan`` — sampled unless its checkpoint ``<state>/<pass id>.safetensors``
    exists, checkpointed atomically, then its generated frames decoded and written. Everything it reads
    (reference latents of its dependencies, context frames of its own views) comes from the job folder,
    so it runs the same here or in a Ray worker on another host that sees the folder, and a unit lost
    with its worker is simply run again.

    ``progress(d)``: steps of this pass done so far (0 … ``runner.pass_steps(tag, p)``). Returns True
    when the pass was sampled, False when its checkpoint already existed (only lost frames rewritten).
    """
    s = runner.s
    path = runner.ckpt(tag, p)
    n_steps = runner.pass_steps(tag, p)
    if path.is_file():
        runner.write_frames(tag, p, _load_latents(path))  # no-op unless frames were lost
        progress(n_steps)
        return False
    if runner.check is not None:
        runner.check()
    t0 = time.time()
    kw = runner.inputs(tag, plan, p, factor)
    runner.g._use("transformer")
    lat = sample(runner.g.transformer, kw.pop("latents_shape"), **kw, steps=p.steps, guidance=s.guidance,
                 seed=pass_seed(s.seed, ("preview-" if tag == "preview" else "") + p.id),
                 sampler=mmvdm_stage_sampler(s, tag),
                 strength=s.refine_strength if kw["init_latents"] is not None else 1.0,
                 progress=lambda d, _t: progress(d), check=runner.check,
                 sub_batch=1 if s.cfg_passes == "sequential" else None, scheduler=runner.g.scheduler,
                 device=runner.g.device)
    own = lat[len(p.reference_views):]
    _save_latents(path, own, {"pass": p.to_json(), "stage": tag})
    progress(n_steps)
    runner.log(f"MMVDM {tag} pass {p.id} (mode {p.mode}, {len(p.views)} views + {len(p.reference_views)} "
               f"references, frames {p.frames[0]}-{p.frames[1] - 1}) took {time.time() - t0:.1f} s")
    runner.write_frames(tag, p, own)
    return True
