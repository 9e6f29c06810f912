"""Fit the 4D Gaussian avatar to the multi-view corpus (paper §4 "3DGS Fitting", S2.4).

:func:`fit_avatar` runs the whole fit; :class:`AvatarFitter` is its state machine (init or resume,
one optimisation step, snapshot, checkpoint). The representation is GaussianAvatars' as extended by
CAP4D and MVP4D, rebuilt from the papers:

* **Init**: one Gaussian per triangle at its centroid, for the triangles that face at least one ring
  camera in at least one frame (back-face culling at init), coloured with the mean corpus colour of
  the pixels the triangle covers; plus one Gaussian per keypoint triangulated across the first frame
  of the views (:mod:`.sfm`), bound to its nearest triangle.
* **Animation**: each Gaussian follows its triangle's frame (:mod:`.binding`) on the FLAME mesh of
  every frame, plus a per-frame displacement read from the time-conditioned chart-space U-Net
  (:mod:`.unet`) at the Gaussian's chart coordinate. The U-Net predicts it in a smooth tangent frame
  (normal, azimuth and elevation tangents; :func:`.unet.tangent_to_local`), in triangle-size units;
  the bundle stores it as triangle-local *detail offsets* per frame, exactly what Blender and the
  exporters add.
* **Losses** (:mod:`.losses`): L1 + D-SSIM (+ LPIPS when present), Laplacian of the deformation map,
  velocity rotation (eq. S4) and deformation (eq. S5) between frame t and t+1, scale and position
  hinges; 20 % random dropout of the Gaussians whose triangle faces away from the training camera.
  Our U-Net moves Gaussians (detail offsets) but does not turn them (the bundle has no per-frame
  rotation), so eq. S4 measures the mesh's own rotation between frames: it is computed and logged
  for parity with the paper but has no gradient until rotation offsets are added.
* **Densification** (:mod:`.densify`), checkpoints (:mod:`.checkpoint`) and progress.

One training image (view, frame) per iteration; all randomness comes from one seeded generator that
is checkpointed, so a resumed fit continues exactly where it stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cameras import Camera
from ..errors import Cancelled, MVP4DError
from ..flame.lbs import Flame, FlameParams
from ..render.gaussians import rasterize, rgb_to_sh
from ..threads import torch_threads
from . import losses
from .checkpoint import load_checkpoint, load_optimizer_tensors, optimizer_tensors, save_checkpoint
from .data import check_cameras_see_head, face_colors, face_normals, facing_faces, load_corpus, train_frame_list
from .densify import DensifyState, GaussianStore, refine
from .settings import FitSettings, preset_settings
from .sfm import sfm_points
from .unet import DeformUNet, face_chart, sample_chart, tangent_to_local


def fit_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available (gsplat's kernels), else the CPU (the sparse torch compositor)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MVP4DError("BAD_INPUT", f"fit device {name!r} was asked for but CUDA is not available",
                         "Use device 'auto' or 'cpu'.")
    return torch.device(name)


def _binding():
    from . import binding

    return binding


@dataclass
class FitResult:
    """A fitted avatar in triangle-local form, ready for :mod:`.bundle` (see :func:`to_bundle_tensors`)."""

    tensors: dict[str, torch.Tensor]  # PARAM_NAMES of densify + parent_face
    faces: torch.Tensor  # (F, 3) long
    rest_vertices: torch.Tensor  # (V, 3) identity applied, neutral
    vertices: torch.Tensor  # (T, V, 3) posed per frame
    params: FlameParams
    detail_offsets: torch.Tensor  # (T, N, 3) triangle-local units
    sh_degree: int
    settings: FitSettings
    fps: float
    cameras: list[Camera]
    iterations: int
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def num_gaussians(self) -> int:
        return int(self.tensors["parent_face"].shape[0])

    def local(self):
        t = self.tensors
        return _binding().LocalGaussians(
            parent_face=t["parent_face"], local_position=t["local_position"], local_rotation=t["local_rotation"],
            log_scale=t["log_scale"], opacity_logit=t["opacity_logit"],
            sh=torch.cat([t["sh_dc"], t["sh_rest"]], 1))

    @torch.no_grad()
    def render(self, camera: Camera, frame: int) -> torch.Tensor:
        """(H, W, 3) float in [0, 1] of the avatar at ``frame`` seen from ``camera`` (white background)."""
        w = _binding().local_to_world(self.local(), self.vertices[frame:frame + 1], self.faces,
                                      detail_offsets=self.detail_offsets[frame:frame + 1])
        idx = torch.arange(self.num_gaussians, device=self.vertices.device)
        return _render(w, 0, idx, camera, self.sh_degree).rgb[0].clamp(0, 1).cpu()


def _render(world, frame_idx: int, idx: torch.Tensor, camera: Camera, deg: int):
    K = (deg + 1) ** 2
    dev = world.means.device
    vm = torch.as_tensor(camera.world_to_cam, dtype=torch.float32, device=dev)[None]
    Ks = torch.as_tensor(camera.K, dtype=torch.float32, device=dev)[None]
    opac = world.opacities if world.opacities.dim() == 1 else world.opacities[frame_idx]
    return rasterize(world.means[frame_idx][idx], world.quats[frame_idx][idx], world.scales[frame_idx][idx],
                     opac[idx], world.sh[idx, :K], vm, Ks, camera.width, camera.height, sh_degree=deg)


class AvatarFitter:
    """State of one fit: corpus, geometry, Gaussians, U-Net, optimisers, RNG (module docstring)."""

    def __init__(self, corpus_dir: str | Path, flame: Flame, shape: torch.Tensor | None, settings: FitSettings,
                 checkpoint_dir: str | Path | None = None, log: Callable[[str], None] | None = None):
        self.s, self.flame, self.log = settings, flame, log or (lambda m: None)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.device = fit_device(settings.device)
        self.corpus = load_corpus(corpus_dir, flame, shape, settings.resolution)
        with torch.no_grad():
            self.vertices = flame(self.corpus.params.to(flame.device)).vertices.float().cpu()
        if not torch.isfinite(self.vertices).all():
            raise MVP4DError("BAD_INPUT", "the corpus animation produces non-finite vertices")
        check_cameras_see_head(self.corpus.cameras, self.corpus.names, self.vertices)
        self.faces = flame.faces.long().cpu()
        self.T = self.corpus.num_frames
        self.train_frames = train_frame_list(self.T, settings.train_frames)
        with torch.no_grad():
            self.rest = flame.neutral_vertices(self.corpus.params.shape.to(flame.device)).float().cpu()
        mask = flame.model.head_mask()
        head = self.rest[torch.as_tensor(mask)] if mask is not None and np.any(mask) else self.rest
        self.extent = float((head.max(0).values - head.min(0).values).max())
        self.head_center = ((head.max(0).values + head.min(0).values) / 2).to(self.device)
        self.chart = face_chart(flame.v_template.cpu().numpy(), self.faces.numpy(), mask).to(self.device)
        self.gen = torch.Generator().manual_seed(settings.seed)  # CPU: the same stream on every device
        with torch.random.fork_rng(devices=[]):  # a seeded, reproducible initialisation
            torch.manual_seed(settings.seed)
            self.unet = DeformUNet(settings.unet_resolution, settings.unet_channels, settings.unet_depth, self.T,
                                   scale=settings.deform_scale).to(self.device)
        self.unet_opt = torch.optim.Adam(self.unet.parameters(), lr=settings.lr_unet * settings.lr_scale)
        self.lpips = losses.load_lpips() if settings.lpips_weight > 0 else None
        if settings.lpips_weight > 0 and self.lpips is None:
            self.log(f"no LPIPS weights on this machine (${losses.LPIPS_ENV}): the LPIPS term is skipped")
        self.iteration = 0
        self.last_checkpoint: int | None = None
        self.psnr_window: list[float] = []  # last 50 training PSNRs: checkpointed, so a resumed fit reports the same
        if not self._resume():
            self._init()
        self.dstate = getattr(self, "dstate", None) or DensifyState(len(self.store), self.device)
        # the fit itself runs on the device (init and checks above ran on the CPU)
        self.vertices, self.faces = self.vertices.to(self.device), self.faces.to(self.device)

    # ---- init / resume ---------------------------------------------------------------------------
    def _lrs(self) -> dict[str, float]:
        s, k = self.s, self.s.lr_scale
        return {"local_position": s.lr_position * k, "local_rotation": s.lr_rotation * k, "log_scale": s.lr_scaling * k,
                "opacity_logit": s.lr_opacity * k, "sh_dc": s.lr_sh * k, "sh_rest": s.lr_sh * k / 20.0}

    def _init(self) -> None:
        s, K = self.s, (self.s.sh_degree + 1) ** 2
        keep = facing_faces(self.vertices, self.faces, self.corpus.cameras)
        colors = face_colors(self.corpus, self.vertices, self.faces, [self.train_frames[0]])
        fidx = torch.nonzero(keep).ravel()
        n = len(fidx)
        pos = torch.zeros(n, 3)
        rgb = colors[fidx]
        self.log(f"init: {n} of {len(self.faces)} triangles face the ring ({len(self.faces) - n} culled)")
        if s.use_sfm:
            pf, lp, pc = self._sfm_gaussians()
            fidx, pos, rgb = torch.cat([fidx, pf]), torch.cat([pos, lp]), torch.cat([rgb, pc])
        N = len(fidx)
        scale = torch.tensor([s.init_scale, s.init_normal_scale, s.init_scale]).log()  # local y = normal
        logit = math.log(s.init_opacity / (1 - s.init_opacity))
        tensors = {
            "local_position": pos, "local_rotation": torch.tensor([1.0, 0, 0, 0]).repeat(N, 1),
            "log_scale": scale.repeat(N, 1), "opacity_logit": torch.full((N,), logit),
            "sh_dc": rgb_to_sh(rgb.clamp(0, 1))[:, None, :], "sh_rest": torch.zeros(N, K - 1, 3),
        }
        self.store = GaussianStore({k: v.to(self.device) for k, v in tensors.items()}, fidx.to(self.device), self._lrs())

    def _sfm_gaussians(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, c = _binding(), self.corpus
        images = [c.image(v, 0).numpy() for v in range(len(c.cameras))]
        res = sfm_points(images, c.cameras, c.key_indices, log=self.log)
        empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, 3), torch.zeros(0, 3))
        if len(res) == 0:
            return empty
        pts = torch.as_tensor(res.points, dtype=torch.float32)
        v0 = self.vertices[0]
        face = b.nearest_faces(pts, v0, self.faces)
        _, cen = face_normals(v0, self.faces)
        near = (pts - cen[face]).norm(dim=-1) <= self.s.sfm_max_distance * self.extent
        pts, face, col = pts[near], face[near], torch.as_tensor(res.colors, dtype=torch.float32)[near]
        if len(pts) > self.s.sfm_max_points:
            sel = torch.randperm(len(pts), generator=self.gen)[: self.s.sfm_max_points]
            pts, face, col = pts[sel], face[sel], col[sel]
        n = len(pts)
        if n == 0:
            return empty
        world = b.WorldGaussians(pts, torch.tensor([1.0, 0, 0, 0]).repeat(n, 1), torch.ones(n, 3),
                                 torch.full((n,), 0.5), torch.zeros(n, 1, 3))
        local = b.world_to_local(world, face, v0, self.faces).local_position
        self.log(f"init: {len(pts)} Gaussians from triangulated keypoints")
        return face.long(), local, col

    def _structure(self) -> dict[str, Any]:
        return {**self.s.structure(), "num_frames": self.T, "num_faces": int(len(self.faces))}

    def _resume(self) -> bool:
        if self.checkpoint_dir is None:
            return False
        got = load_checkpoint(self.checkpoint_dir)
        if got is None:
            return False
        t, info = got
        if info.get("structure") != self._structure() or int(info["iteration"]) > self.s.iterations:
            self.log("checkpoint does not match these settings: starting afresh")
            return False
        # Adam keeps its step counts on the CPU (unless capturable); everything else goes to the device
        t = {k: (v if k == "rng" or k.endswith(".step") else v.to(self.device)) for k, v in t.items()}
        self.store = GaussianStore.from_state(t, self._lrs())
        self.unet.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("unet.")})
        load_optimizer_tensors("unet_adam", self.unet_opt, list(self.unet.parameters()), t)
        self.dstate = DensifyState(len(self.store), self.device)
        self.dstate.load(t)
        self.gen.set_state(t["rng"])
        self.iteration = self.last_checkpoint = int(info["iteration"])
        self.psnr_window = [float(x) for x in info.get("psnr_window", [])]
        self.log(f"resuming from the checkpoint at iteration {self.iteration}")
        return True

    def checkpoint(self, extra: dict[str, Any] | None = None) -> None:
        if self.checkpoint_dir is None or self.last_checkpoint == self.iteration:
            return
        t = {k: v.cpu() for k, v in self.store.state_tensors().items()}
        if not all(torch.isfinite(v).all() for k, v in t.items() if v.is_floating_point()):
            return  # never replace a good checkpoint with a diverged one
        t.update({f"unet.{k}": v for k, v in self.unet.state_dict().items()})
        t.update(optimizer_tensors("unet_adam", self.unet_opt, list(self.unet.parameters())))
        t.update(self.dstate.state_tensors())
        t["rng"] = self.gen.get_state()
        save_checkpoint(self.checkpoint_dir, t, {"iteration": self.iteration, "structure": self._structure(),
                                                 "num_gaussians": len(self.store), "settings": self.s.to_json(),
                                                 "psnr_window": self.psnr_window, **(extra or {})})
        self.last_checkpoint = self.iteration

    # ---- one step ----------------------------------------------------------------------------------
    def local(self):
        p = self.store.params
        return _binding().LocalGaussians(
            parent_face=self.store.parent_face, local_position=p["local_position"], local_rotation=p["local_rotation"],
            log_scale=p["log_scale"], opacity_logit=p["opacity_logit"], sh=self.store.sh)

    def _to_local(self, d: torch.Tensor, frames: list[int]) -> torch.Tensor:
        """U-Net offsets (T', N, 3) in the tangent frames of ``frames`` -> triangle-local offsets."""
        R, _, c = _binding().face_frames(self.vertices[frames], self.faces)
        M = tangent_to_local(R, c, self.head_center)  # (T', F, 3, 3)
        return (M[:, self.store.parent_face] @ d[..., None])[..., 0]

    def sh_degree(self) -> int:
        return min(self.s.sh_degree, self.iteration // max(self.s.sh_increase_every, 1))

    def _schedule(self) -> None:
        s, r = self.s, self.iteration / max(self.s.iterations, 1)
        k = s.lr_scale
        self.store.set_lr("local_position", k * math.exp((1 - r) * math.log(s.lr_position) + r * math.log(s.lr_position_final)))
        lr_u = k * math.exp((1 - r) * math.log(s.lr_unet) + r * math.log(s.lr_unet_final))
        for g in self.unet_opt.param_groups:
            g["lr"] = lr_u

    def step(self) -> dict[str, float]:
        s, b = self.s, _binding()
        v = int(torch.randint(len(self.corpus.cameras), (1,), generator=self.gen))
        t = self.train_frames[int(torch.randint(len(self.train_frames), (1,), generator=self.gen))]
        t1 = t + 1 if t + 1 < self.T else max(t - 1, 0)
        cam = self.corpus.cameras[v]
        target = self.corpus.image(v, t).to(self.device).float() / 255.0
        self._schedule()
        maps = self.unet(torch.tensor([t, t1], device=self.device))
        d = sample_chart(maps, self.chart[self.store.parent_face])  # (2, N, 3) tangent-frame offsets
        world = b.local_to_world(self.local(), self.vertices[[t, t1]], self.faces,
                                 detail_offsets=self._to_local(d, [t, t1]))
        n, cen = face_normals(self.vertices[t], self.faces)
        pf = self.store.parent_face
        back = ((torch.as_tensor(cam.center, dtype=torch.float32, device=self.device) - cen[pf]) * n[pf]).sum(-1) <= 0
        drop = back & (torch.rand(len(pf), generator=self.gen).to(self.device) < s.backface_dropout)
        idx = torch.nonzero(~drop).ravel()
        out = _render(world, 0, idx, cam, self.sh_degree())
        out.means2d.retain_grad()
        rgb = out.rgb[0]
        p = self.store.params
        terms = {
            "rgb": losses.photometric_loss(rgb, target, s.dssim_weight, self.lpips, s.lpips_weight),
            "lap": s.laplacian_weight * losses.laplacian_loss(maps),
            "v_deform": losses.velocity_deformation_loss(d[0], d[1], s.v_deform_weight),
            "v_rot": losses.velocity_rotation_loss(world.quats[0], world.quats[1], s.v_rot_weight),
            "scale": s.scale_weight * losses.scale_loss(p["log_scale"][idx], s.scale_threshold),
            "position": s.position_weight * losses.position_loss(p["local_position"][idx], s.position_threshold),
        }
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            bad = [k for k, x in terms.items() if not torch.isfinite(x)]
            where = f"the last good checkpoint (iteration {self.last_checkpoint}) is kept in {self.checkpoint_dir}" \
                if self.last_checkpoint is not None else "no checkpoint had been written yet"
            raise MVP4DError("INTERNAL", f"the avatar fit diverged: the {', '.join(bad)} loss became NaN/inf at "
                             f"iteration {self.iteration} (view {self.corpus.names[v]!r}, frame {t}); {where}",
                             "Lower the learning rates (job.json fit.lr_scale, e.g. 0.5) and run the job again.")
        self.store.zero_grad()
        self.unet_opt.zero_grad(set_to_none=True)
        loss.backward()
        if out.means2d.grad is not None:
            self.dstate.accumulate(idx, out.means2d.grad[0], out.visible[0], cam.width, cam.height)
        self.store.step()
        self.unet_opt.step()
        self.iteration += 1
        stats = refine(self.store, self.dstate, s.densify, self.iteration,
                       world.scales[0].detach().max(-1).values, self.extent, self.gen)
        if stats["cloned"] or stats["split"] or stats["pruned"]:
            self.log(f"densify at {self.iteration}: +{stats['cloned']} cloned, +{stats['split']} split, "
                     f"-{stats['pruned']} pruned -> {len(self.store)} Gaussians")
        return {"loss": float(loss.detach()), "psnr": losses.psnr(rgb.detach().clamp(0, 1), target),
                **{k: float(x.detach()) for k, x in terms.items()}, "view": v, "frame": t}

    # ---- results -------------------------------------------------------------------------------------
    @torch.no_grad()
    def snapshot(self, stats: dict[str, Any] | None = None) -> FitResult:
        maps = torch.cat([self.unet(torch.arange(s, min(s + 8, self.T), device=self.device))
                          for s in range(0, self.T, 8)])
        d = sample_chart(maps, self.chart[self.store.parent_face])  # (T, N, 3) tangent-frame offsets
        for s in range(self.T):  # -> triangle-local detail offsets, frame by frame
            d[s] = self._to_local(d[s:s + 1], [s])[0]
        tensors = {k: v.detach().clone() for k, v in self.store.params.items()}
        tensors["parent_face"] = self.store.parent_face.clone()
        return FitResult(tensors, self.faces, self.rest, self.vertices, self.corpus.params, d, self.sh_degree(), self.s,
                         self.corpus.fps, self.corpus.cameras, self.iteration, dict(stats or {}))


def fit_avatar(
    corpus_dir: str | Path, flame: Flame, shape: torch.Tensor | None = None, settings: FitSettings | None = None,
    progress: Callable[[int, int], None] | None = None, check: Callable[[], None] | None = None,
    checkpoint_dir: str | Path | None = None, log: Callable[[str], None] | None = None,
    on_step: Callable[[int, dict, AvatarFitter], None] | None = None,
) -> FitResult:
    """Fit the avatar; resumes from ``checkpoint_dir`` when it holds a matching checkpoint.

    ``progress(done, total)`` follows the iterations; ``check()`` is called before each one (a cancel
    raised there first writes a checkpoint); ``log`` gets a line every ``settings.log_every``
    iterations; ``on_step(iteration, metrics, fitter)`` is called after each (benchmarks, tests).
    """
    s = settings or preset_settings("preview")
    with torch_threads(s.threads):
        return _fit(corpus_dir, flame, shape, s, progress, check, checkpoint_dir, log or (lambda m: None), on_step)


def _fit(corpus_dir, flame, shape, s: FitSettings, progress, check, checkpoint_dir, log, on_step) -> FitResult:
    t0 = time.time()
    f = AvatarFitter(corpus_dir, flame, shape, s, checkpoint_dir, log)
    total, every = s.iterations, max(1, s.iterations // 200)
    log(f"fitting {len(f.store)} Gaussians to {len(f.corpus.cameras)} views x {len(f.train_frames)} frames, "
        f"{total} iterations")
    m: dict[str, Any] = {}
    t_start, it_start = time.time(), f.iteration
    while f.iteration < total:
        try:
            if check is not None:
                check()
        except Cancelled:
            f.checkpoint()
            raise
        m = f.step()
        f.psnr_window = window = (f.psnr_window + [m["psnr"]])[-50:]
        if on_step is not None:
            on_step(f.iteration, m, f)
        if f.iteration % s.log_every == 0 or f.iteration == total:
            rate = (f.iteration - it_start) / max(time.time() - t_start, 1e-9)
            log(f"iter {f.iteration} loss {m['loss']:.4f} psnr {m['psnr']:.2f} (mean of last {len(window)}: "
                f"{sum(window) / len(window):.2f}) gaussians {len(f.store)} {rate:.2f} it/s")
        if progress is not None and (f.iteration % every == 0 or f.iteration == total):
            progress(f.iteration, total)
        if s.checkpoint_every and f.iteration % s.checkpoint_every == 0:
            f.checkpoint()
    f.checkpoint()
    stats = {"seconds": time.time() - t0, "train_psnr": sum(f.psnr_window) / len(f.psnr_window) if f.psnr_window else None,
             "num_gaussians": len(f.store), "iterations": f.iteration}
    return f.snapshot(stats)


__all__ = ["fit_avatar", "AvatarFitter", "FitResult", "FitSettings", "preset_settings"]
