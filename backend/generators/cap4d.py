"""The CAP4D generator: CAP4D's public MMDM makes the views × frames corpus from one photo.

1. The image budget (``generator.quality``, :data:`~backend.protocol.CAP4D_QUALITY`: images, DDIM steps,
   resolution) fixes how many animation frames the corpus holds: ``images // views`` frames (at least
   1, at most the animation's), evenly spaced from the first to the last (:func:`cap4d_frames`). The
   corpus stage writes only those frames, so fitting sees an ordinary, shorter grid.
2. ``FLAME_REQUIRED`` unless the head model has FLAME's 5,023 vertices; the VRAM estimate is checked
   against the free GPU memory before any loading (``OUT_OF_MEMORY`` with a setting that would fit).
3. Every image (reference and targets) is CAP4D's own crop: a square 1.2 × the projected head box,
   at the preset's resolution. The reference is the matted photo cropped so and VAE-encoded
   (posterior sample × 0.18215); each target's crop is taken in its ring camera.
4. :class:`~backend.cap4d.sampler.StochasticIOSampler` generates all targets (CFG 2.0); the latents
   are checkpointed after every step (``state_dir/steps.safetensors``: a resumed job continues at its
   last finished step) and at the end (``state_dir/latents.safetensors`` with the settings fingerprint),
   so a resumed finished job only decodes. Each step's groups are independent units: the Ray executor
   runs them as tasks (:mod:`backend.executors`).
5. Each view's crops are decoded and pasted back into the ring camera's image (white outside the
   crop) and written as one atomic folder ``views/<name>/NNNN.png``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as Fn
from PIL import Image
from safetensors.torch import load_file, save_file

from ..cameras import Camera, CameraRing
from ..conditioning.crop import crop_camera, crop_image, head_boxes
from ..errors import MVP4DError, bad_input
from ..estimates import CAP4D_VRAM as _CAP4D_VRAM
from ..estimates import cap4d_memory
from ..flame import Flame, FlameParams
from ..fsutil import atomic_dir, atomic_path, write_json_atomic
from ..protocol import CAP4D_QUALITY, CAP4D_QUALITY_FOR_PRESET

__all__ = ["CAP4DSettings", "CAP4DGenerator", "StepCheckpoint", "cap4d_frames", "select_frames", "CAP4D_VRAM", "estimate_vram"]

GiB = 1024**3
#: crop side / larger side of the projected head box (upstream's 20 % margin)
CAP4D_CROP_SCALE = 1.2
#: memory presets: groups per UNet call, VAE tiling, model offload (one definition in :mod:`backend.estimates`)
CAP4D_VRAM = _CAP4D_VRAM


def cap4d_frames(num_frames: int, num_views: int, quality: str) -> list[int]:
    """Animation frame indices the corpus holds for this budget: evenly spaced, first and last included."""
    images = CAP4D_QUALITY[quality][0]
    n = int(min(max(1, images // max(1, num_views)), num_frames))
    return sorted({int(round(x)) for x in np.linspace(0, num_frames - 1, n)}) if n > 1 else [0]


def select_frames(params: FlameParams, idx: list[int]) -> FlameParams:
    """The frames ``idx`` of an animation (same identity)."""
    i = torch.as_tensor(idx, dtype=torch.long)
    return replace(params, expr=params.expr[i], global_rot=params.global_rot[i], neck_pose=params.neck_pose[i],
                   jaw_pose=params.jaw_pose[i], eye_pose=params.eye_pose[i], transl=params.transl[i])


@dataclass
class CAP4DSettings:
    seed: int = 0
    quality: str = "low"
    dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    device: str | None = None
    groups_per_batch: int = 1
    cfg_batched: bool = True
    vae_tiling: bool = False
    offload: str = "none"  # none | model
    attention_backend: str | None = None  # diffusers' dispatcher name (flash, _native_cudnn, sage, ...)

    @classmethod
    def from_spec(cls, spec: Any, camera_preset: str) -> "CAP4DSettings":
        vram = spec.vram or "medium"
        quality = spec.quality or CAP4D_QUALITY_FOR_PRESET.get(camera_preset, "low")
        kw = dict(CAP4D_VRAM[vram])
        if spec.vae_tiling is not None:
            kw["vae_tiling"] = spec.vae_tiling
        if spec.offload is not None:
            kw["offload"] = "none" if spec.offload == "none" else "model"
        return cls(seed=spec.seed, quality=quality, dtype=spec.dtype, device=spec.device, **kw)

    def resolved_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.dtype]


def estimate_vram(settings: CAP4DSettings, device: torch.device) -> dict[str, int]:
    """Bytes: ``unet`` (weights + one CFG batch of 8-view groups), ``vae`` (decode), ``peak``
    (:func:`backend.estimates.cap4d_memory` in this device's dtype)."""
    nbytes = torch.empty((), dtype=settings.torch_dtype(device)).element_size()
    return cap4d_memory(settings.quality, nbytes=nbytes, groups_per_batch=settings.groups_per_batch,
                        cfg_batched=settings.cfg_batched, vae_tiling=settings.vae_tiling, offload=settings.offload)


class CAP4DGenerator:
    """Runs CAP4D's MMDM for a job (see the module docstring). ``components``: preloaded (tests)."""

    def __init__(self, weights: str | Path | None, settings: CAP4DSettings, *, components: Any = None):
        self.settings, self.components = settings, components
        self.weights = None if weights is None else Path(weights)
        if components is None:
            if self.weights is None:
                raise MVP4DError("WEIGHTS_MISSING", "the cap4d generator needs CAP4D weights (--weights)",
                                 "Download cap4d_mmdm_100k.ckpt (Hugging Face ftaubner/cap4d), run 'python -m "
                                 "backend weights convert --from FILE.ckpt --out DIR' and pass --weights DIR.")
            from ..cap4d.weights import check_weights

            check_weights(self.weights)  # WEIGHTS_* before any work

    def check_memory(self, log: Callable[[str], None]) -> dict[str, int]:
        s = self.settings
        device = s.resolved_device()
        est = estimate_vram(s, device)
        log(f"CAP4D memory estimate ({s.torch_dtype(device)}, {s.groups_per_batch} group(s) per call, offload "
            f"{s.offload}, VAE tiling {s.vae_tiling}): UNet {est['unet'] / GiB:.1f} GiB, VAE {est['vae'] / GiB:.1f} GiB")
        if device.type == "cuda" and torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info(device)
            if est["peak"] > free:
                fits = [v for v in ("medium", "low", "lowest")
                        if estimate_vram(replace(s, **CAP4D_VRAM[v]), device)["peak"] <= free]
                hint = (f"Use the '{fits[0]}' VRAM setting (--vram {fits[0]})." if fits else
                        "This GPU has too little free memory for CAP4D; close other programs or use another GPU.")
                raise MVP4DError("OUT_OF_MEMORY", f"CAP4D needs about {est['peak'] / GiB:.1f} GiB of GPU memory "
                                 f"but only {free / GiB:.1f} GiB are free", hint)
        return est

    def _load(self, device: torch.device, log: Callable[[str], None]) -> Any:
        s = self.settings
        dtype = s.torch_dtype(device)
        if self.components is None:
            from ..cap4d.weights import load_cap4d

            t0 = time.time()
            self.components = load_cap4d(self.weights, dtype=dtype, device="cpu",
                                         vae_dtype=torch.float32 if dtype == torch.float16 else dtype)
            log(f"loaded CAP4D weights from {self.weights} in {time.time() - t0:.1f} s")
        c = self.components
        if s.attention_backend:
            c.unet.set_attention_backend(s.attention_backend)
        if s.vae_tiling:
            c.vae.enable_tiling()
        c.unet.to(device)
        c.vae.to("cpu" if s.offload == "model" else device)
        return c

    def _fingerprint(self, ring: CameraRing, frames: list[int]) -> dict[str, Any]:
        s = asdict(self.settings)
        for k in ("device", "groups_per_batch", "cfg_batched", "vae_tiling", "offload", "attention_backend"):
            s.pop(k)
        return {"settings": s, "frames": frames, "views": [c.name for c in ring.cameras],
                "weights": None if self.weights is None else str(self.weights)}

    @torch.no_grad()
    def generate(self, ring: CameraRing, flame: Flame, params: FlameParams, frames: list[int],
                 ref_params: FlameParams, ref_camera: Camera, matted: np.ndarray, out_views_dir: str | Path,
                 state_dir: str | Path, progress: Callable[[int, int], None] | None = None,
                 check: Callable[[], None] | None = None, log: Callable[[str], None] | None = None,
                 executor: Any = None) -> dict[str, Any]:
        """Write ``views/<name>/NNNN.png`` for ``frames`` of ``params`` (the full animation) in every view.

        ``ref_params``/``ref_camera``/``matted``: the tracked photo (one frame), its camera and the matted
        photo (uint8 H × W × 3 on white). ``executor``: how each step's groups run (:mod:`backend.executors`;
        None: here, one after the other).
        """
        from ..cap4d.latents import decode_latents, encode_images
        from ..cap4d.maps import CROP_CHANNEL, REF_CHANNEL, CAP4DGeometry, conditioning_maps, posed_head, require_flame
        from ..cap4d.sampler import SamplerSettings, StochasticIOSampler

        s, log = self.settings, log or (lambda _m: None)
        check, progress = check or (lambda: None), progress or (lambda d, t: None)
        require_flame(flame)
        images, steps, res = CAP4D_QUALITY[s.quality]
        if res % 8:
            raise bad_input(f"CAP4D generates at multiples of 8 pixels, got {res}")
        lat = res // 8
        t0 = time.time()
        est = self.check_memory(log)
        out_views_dir, state_dir = Path(out_views_dir), Path(state_dir)
        device = s.resolved_device()
        comp = self._load(device, log)
        geom = CAP4DGeometry.from_tensors(comp.geometry)
        head = torch.as_tensor(flame.model.head_mask())

        # reference: CAP4D's crop of the matted photo, encoded; its maps with ref/crop channels set
        rv, ro = posed_head(flame, ref_params)
        uv, _ = ref_camera.project(rv[0, : flame.num_vertices].cpu().numpy())
        box = head_boxes(uv, head.numpy(), scale=CAP4D_CROP_SCALE)
        crop, outcrop = crop_image(matted, box, res)
        rcam = crop_camera(ref_camera, box, res)
        gen = torch.Generator().manual_seed(int(s.seed))
        if s.offload == "model":
            comp.vae.to(device)
        z_ref = encode_images(comp.vae, torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0, gen)
        ref_maps = conditioning_maps(geom, rv, ro, [rcam], rcam, lat)
        ref_maps[..., REF_CHANNEL] = 1.0
        ref_maps[..., CROP_CHANNEL] = Fn.adaptive_avg_pool2d(torch.from_numpy(outcrop).float()[None, None], lat)[0, 0]

        # targets: every (view, frame) in CAP4D's crop of its ring camera
        verts, offs = posed_head(flame, select_frames(params, frames))
        cams, boxes, maps = [], [], []
        for cam in ring.cameras:
            uvs = np.stack([cam.project(v[: flame.num_vertices].cpu().numpy())[0] for v in verts])
            bx = head_boxes(uvs, head.numpy(), scale=CAP4D_CROP_SCALE)
            ccams = [crop_camera(cam, b, res) for b in bx]
            maps.append(conditioning_maps(geom, verts, offs, ccams, rcam, lat))
            cams.append(ccams)
            boxes.append(bx)
        target_maps = torch.cat(maps)  # (views × frames, lat, lat, 50), view-major

        fp = self._fingerprint(ring, frames)
        ckpt = state_dir / "latents.safetensors"
        latents = None
        if (state_dir / "settings.json").is_file():
            try:
                old = json.loads((state_dir / "settings.json").read_text())
            except (OSError, ValueError):
                old = None
            if old == fp and ckpt.is_file():
                latents = load_file(str(ckpt))["latents"]
                log("resuming: CAP4D latents already sampled")
            elif old != fp:  # another run's state and views (job-owned files) must not mix with this one
                log("CAP4D settings changed since the last run: sampling again")
                shutil.rmtree(state_dir)
                for cam in ring.cameras:
                    if (out_views_dir / cam.name).is_dir():
                        shutil.rmtree(out_views_dir / cam.name)
        if latents is None:
            log(f"CAP4D: {len(target_maps)} images ({len(ring)} views × {len(frames)} frames), {steps} steps, "
                f"budget {images}")
            if s.offload == "model":
                comp.vae.to("cpu")
            state_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(state_dir / "settings.json", fp)  # the step checkpoints belong to these settings
            sampler_settings = SamplerSettings(steps=steps, seed=s.seed, groups_per_batch=s.groups_per_batch,
                                               cfg_batched=s.cfg_batched)
            sampler = StochasticIOSampler(comp.unet, sampler_settings)
            groups = None
            if getattr(executor, "name", "local") != "local":
                groups = executor.cap4d_groups(self, sampler_settings, (z_ref, ref_maps, target_maps))
            steps_ckpt = StepCheckpoint(state_dir / "steps.safetensors")
            latents = sampler.sample(z_ref, ref_maps, target_maps, check=check,
                                     progress=lambda d, t: progress(d, t + len(ring)), device=device, groups=groups,
                                     step_checkpoint=steps_ckpt).cpu()
            with atomic_path(ckpt) as tmp:
                save_file({"latents": latents.contiguous()}, str(tmp))
            steps_ckpt.remove()
        if s.offload == "model":
            comp.unet.to("cpu")
            comp.vae.to(device)

        F = len(frames)
        for v, cam in enumerate(ring.cameras):
            if (out_views_dir / cam.name).is_dir():
                continue
            check()
            imgs = decode_latents(comp.vae, latents[v * F:(v + 1) * F])
            with atomic_dir(out_views_dir / cam.name) as tmp:
                for f in range(F):
                    img = paste_crop(imgs[f], boxes[v][f], cam.width, cam.height)
                    Image.fromarray(img).save(tmp / f"{f:04d}.png", compress_level=1)
            progress(steps + v + 1, steps + len(ring))
        return {"images": len(target_maps), "frames": frames, "steps": steps, "resolution": res, "memory": est,
                "time_s": round(time.time() - t0, 2)}


class StepCheckpoint:
    """The sampler's latents after its last finished step (``step`` in the file's metadata), written
    atomically after every step: a cancelled or crashed run resumes at that step."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> tuple[int, torch.Tensor] | None:
        if not self.path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            step = int((f.metadata() or {}).get("step", 0))
            return (step, f.get_tensor("x")) if step > 0 else None

    def save(self, step: int, x: torch.Tensor) -> None:
        with atomic_path(self.path) as tmp:
            save_file({"x": x.detach().float().cpu().contiguous()}, str(tmp), metadata={"step": str(int(step))})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def paste_crop(crop: torch.Tensor, box: np.ndarray, width: int, height: int) -> np.ndarray:
    """A (3, n, n) crop in [0, 1] put back into a ``height × width`` image (white outside), uint8 HWC.

    Box ``[x0, y0, size]`` in the image's pixel-centre convention (:mod:`backend.conditioning.crop`):
    image pixel u maps to crop pixel u' = (u − x0 + 0.5)·n/size − 0.5.
    """
    n = crop.shape[-1]
    x0, y0, size = (float(b) for b in np.asarray(box).reshape(-1)[:3])
    u = (torch.arange(width, dtype=torch.float32) - x0 + 0.5) * n / size - 0.5
    v = (torch.arange(height, dtype=torch.float32) - y0 + 0.5) * n / size - 0.5
    gy, gx = torch.meshgrid((v + 0.5) / n * 2 - 1, (u + 0.5) / n * 2 - 1, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None]
    out = Fn.grid_sample(crop[None].float() - 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return ((out[0] + 1.0).clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy()
