"""The MMVDM generator: the paper's multi-view video diffusion model behind the corpus stage.

Unlike the projection generator (one view at a time), the MMVDM works through a *plan*
(:mod:`backend.mmvdm.plan`): key views first, then clusters conditioned on them, then sliding-window
extensions. :meth:`MMVDMGenerator.generate` therefore takes the whole ring:

1. builds the plan and reports a VRAM estimate for the chosen settings (``OUT_OF_MEMORY`` before any
   loading when a CUDA device is present and the estimate exceeds its free memory, naming a setting
   that would fit);
2. loads the weights (``WEIGHTS_MISSING`` / ``WEIGHTS_MISMATCH`` from :func:`backend.mmvdm.load_mmvdm`);
3. encodes the reference crop with the VAE and renders the reference conditioning;
4. runs the passes in order. Each pass's inputs are read back from ``state_dir`` — reference views'
   latents from the checkpoint of the key pass of the same window, context frames (the last 9 output
   frames of the same views) from the PNG frames already written, re-encoded with the VAE — so a
   resumed run sees exactly what an uninterrupted one sees. Its conditioning is rendered per view with
   :func:`backend.conditioning.video_conditioning` for the pass's window, with the ``reference_mask``
   channel equal to the mode's clean-slot mask; CFG scales per view from the angle to the reference
   image's camera (``cfg_angle``; :mod:`~backend.mmvdm.guidance_angle`, :func:`~backend.mmvdm.sampler.guidance_scale`).
   Each pass is seeded from ``(seed, pass id)`` (:func:`pass_seed`);
5. checkpoints every finished pass's latents to ``state_dir/<pass id>.safetensors`` atomically (resume
   skips them; a pass cancelled half-way restarts from its first step with the same seed, so the
   result is bit-identical), decodes its views one at a time and writes their generated frames to
   ``state_dir/frames/<camera>/NNNN.png``;
6. when a view has all its frames, writes ``out_views_dir/<camera name>/NNNN.png`` as one atomic folder
   (the corpus stage's layout: a view folder appears only once complete).

``state_dir/settings.json`` holds the settings fingerprint; resuming with different settings (seed,
steps, sampler, …) starts the MMVDM state over instead of mixing two runs.

Samplers (``settings.sampler``): ``joint`` (the paper), ``composed`` (Diffusion²-style, per pass, low
memory), ``preview`` (4DVD-style, ring-wide): first a *dense preview* — the plan of a ring whose every
view is a key view, i.e. **all views of a window in one pass**, at 1/``preview_factor`` resolution
(conditioning rendered at that resolution, reference and context frames downscaled before encoding),
``preview_steps`` steps, checkpointed as ``preview-w<n>-key`` with its frames under
``state_dir/preview_frames/``; then, if ``refine_strength`` > 0, the normal plan where every pass
starts from the upsampled preview latents of its views (SDEdit at ``refine_strength``); with
``refine_strength`` = 0 the upsampled preview frames are the output (the quick look).

Memory options (:class:`MMVDMSettings`): ``dtype`` bf16 | fp16 | fp32 (``auto``: bf16 on CUDA, fp32
on CPU), ``vae_slicing`` / ``vae_tiling``, ``cfg_passes`` sequential | batched (the per-view
unconditional passes one at a time or in one batch), ``offload`` none | model (only the module in
use on the GPU) | sequential (accelerate's per-layer offload, slowest, least memory).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cameras import Camera, CameraRing
from ..errors import MVP4DError, bad_input
from ..flame import Flame, FlameParams
from ..fsutil import remove_inside, write_json_atomic
from ..jobpaths import confine
from ..estimates import mmvdm_memory, mmvdm_stage_shapes
from ..mmvdm.plan import Pass, build_plan, check_plan, describe_plan
from ..mmvdm.schedule import make_scheduler
from .mmvdm_passes import PassRunner, pass_seed
from .mmvdm_settings import CFG_PASSES, DTYPES, OFFLOAD_MODES, VRAM_PRESETS, MMVDMSettings

__all__ = ["MMVDMSettings", "MMVDMGenerator", "pass_seed", "DTYPES", "OFFLOAD_MODES", "CFG_PASSES", "VRAM_PRESETS"]

GiB = 1024**3


class _VaeAdapter:
    """The VAE side through ``backend.mmvdm.vae.MMVDMVae`` (encode_reference / encode_views / decode_views)."""

    def __init__(self, vae):
        from ..mmvdm.vae import MMVDMVae

        self.wrapped = vae if isinstance(vae, MMVDMVae) else MMVDMVae(vae)
        self.module = self.wrapped.vae

    def __getattr__(self, name):
        return getattr(self.wrapped, name)


# ---------------------------------------------------------------------------------------------
# the generator
# ---------------------------------------------------------------------------------------------


class MMVDMGenerator:
    """Runs the MMVDM plan for a camera ring (see the module docstring).

    Give either ``weights`` (an MMVDM weights folder; checked now, loaded in :meth:`generate`) or
    ``components`` (an already built ``MMVDMComponents``-like object with ``transformer``, ``vae``,
    ``scheduler_config`` — tests use tiny random ones).
    """

    def __init__(self, weights: str | Path | None = None, settings: MMVDMSettings | None = None, *,
                 components: Any = None):
        self.settings = settings or MMVDMSettings()
        self.settings.validate()
        self.weights = None if weights is None else Path(weights)
        self.components = components
        self._config: dict[str, Any] | None = None
        if components is None:
            if self.weights is None:
                raise MVP4DError("WEIGHTS_MISSING", "the mmvdm generator needs an MMVDM weights folder")
            from ..mmvdm.weights import check_weights

            self._config = dict(check_weights(self.weights)["transformer"])  # WEIGHTS_MISSING / _MISMATCH now
        else:
            self._config = {k: v for k, v in dict(components.transformer.config).items() if not k.startswith("_")}

    @classmethod
    def from_spec(cls, spec: Any, **overrides: Any) -> "MMVDMGenerator":
        """From a ``protocol.GeneratorSpec`` (``weights`` required)."""
        if not getattr(spec, "weights", None):
            raise MVP4DError("WEIGHTS_MISSING", "the mmvdm generator needs an MMVDM weights folder")
        return cls(spec.weights, MMVDMSettings.from_spec(spec, **overrides))

    # -- memory ---------------------------------------------------------------------------------
    def _stage_shapes(self, plan: list[Pass], ring: CameraRing, res: int) -> list[tuple[int, int, int]]:
        """(views per forward, window frames, resolution) of the largest forward of each stage."""
        s = self.settings
        return mmvdm_stage_shapes(plan, len(ring), res, sampler=s.sampler, window_frames=s.window_frames,
                                  preview_factor=s.preview_factor, refine_strength=s.refine_strength)

    def estimate(self, settings: MMVDMSettings, shapes: list[tuple[int, int, int]], device: torch.device) -> dict:
        """Bytes: ``transformer`` (largest sampling step), ``vae`` (decode of one view), ``peak``
        (:func:`backend.estimates.mmvdm_memory` with this model's config and parameter count)."""
        from ..mmvdm.configs import count_parameters

        nbytes = torch.empty((), dtype=settings.torch_dtype(device)).element_size()
        return mmvdm_memory(self._config, count_parameters(self._config), shapes, nbytes=nbytes,
                            sampler=settings.sampler, guidance=settings.guidance, cfg_passes=settings.cfg_passes,
                            offload=settings.offload, vae_tiling=settings.vae_tiling)

    def check_memory(self, plan: list[Pass], ring: CameraRing, res: int, log: Callable[[str], None]) -> dict:
        s = self.settings
        device = s.resolved_device()
        shapes = self._stage_shapes(plan, ring, res)
        est = self.estimate(s, shapes, device)
        log(f"MMVDM memory estimate ({s.torch_dtype(device)}, sampler {s.sampler}, CFG {s.guidance}/{s.cfg_passes}, "
            f"offload {s.offload}, VAE tiling {s.vae_tiling}): sampling step {est['transformer'] / GiB:.1f} GiB, "
            f"VAE decode {est['vae'] / GiB:.1f} GiB, peak {est['peak'] / GiB:.1f} GiB")
        if device.type == "cuda" and torch.cuda.is_available():
            free, _total = torch.cuda.mem_get_info(device)
            est["free"] = int(free)
            if est["peak"] > free:
                raise MVP4DError("OUT_OF_MEMORY",
                                 f"the MMVDM needs about {est['peak'] / GiB:.1f} GiB of GPU memory with these settings "
                                 f"but only {free / GiB:.1f} GiB are free",
                                 self._suggest(shapes, device, free))
        return est

    def _suggest(self, shapes, device, free: int) -> str:
        s = self.settings
        steps: list[tuple[str, dict[str, Any]]] = []
        if s.torch_dtype(device) == torch.float32:
            steps.append(("bf16 weights (dtype = bf16)", {"dtype": "bf16"}))
        if not s.vae_tiling:
            steps.append(("VAE tiling (vae_tiling = true)", {"vae_tiling": True}))
        if s.cfg_passes == "batched" or s.guidance == "conventional":
            steps.append(("sequential multi-view CFG passes (guidance = multiview, cfg_passes = sequential)",
                          {"cfg_passes": "sequential", "guidance": "multiview"}))
        if s.offload == "none":
            steps.append(("model CPU offload (offload = model)", {"offload": "model"}))
        if s.sampler == "joint":
            steps.append(("the low-memory composed sampler (sampler = composed)", {"sampler": "composed"}))
        if s.offload != "sequential":
            steps.append(("layer-by-layer CPU offload (offload = sequential)", {"offload": "sequential"}))
        for name, change in steps:  # one change alone
            if self.estimate(replace(s, **change), shapes, device)["peak"] <= free:
                return f"Use {name} in the generator settings, or choose a smaller quality preset."
        acc, names = s, []
        for name, change in steps:  # cumulative
            acc, names = replace(acc, **change), names + [name]
            if self.estimate(acc, shapes, device)["peak"] <= free:
                return f"Use {' + '.join(names)} in the generator settings, or choose a smaller quality preset."
        return "Even the lowest-memory settings do not fit: choose a smaller quality preset or a GPU with more memory."

    # -- models ---------------------------------------------------------------------------------
    def _load(self, device: torch.device, log: Callable[[str], None]) -> None:
        s = self.settings
        dtype = s.torch_dtype(device)
        if self.components is None:
            from ..mmvdm.weights import load_mmvdm

            t0 = time.time()
            self.components = load_mmvdm(self.weights, dtype=dtype, device="cpu")
            log(f"loaded MMVDM weights from {self.weights} in {time.time() - t0:.1f} s")
        comp = self.components
        self.transformer = comp.transformer.eval()
        if self.transformer.dtype != dtype:
            self.transformer.to(dtype=dtype)
        self.vae = _VaeAdapter(comp.vae)
        vae_dtype = dtype if device.type == "cuda" else torch.float32
        if self.vae.module.dtype != vae_dtype:
            self.vae.module.to(dtype=vae_dtype)
        self.vae.module.eval()
        if s.vae_slicing:
            self.vae.enable_slicing()
        if s.vae_tiling:
            self.vae.enable_tiling()
        self.scheduler = make_scheduler(getattr(comp, "scheduler_config", None))
        self.device = device
        if device.type != "cuda" or s.offload == "none":
            self.transformer.to(device)
            self.vae.module.to(device)
        elif s.offload == "sequential":
            from accelerate import cpu_offload

            cpu_offload(self.transformer, execution_device=device)
            self.vae.module.to(device)  # 0.2 B parameters; MMVDMVae reads its device from the parameters
        # offload == "model": moved in _use()

    def _use(self, which: str) -> None:
        """Model offload: only the module about to run sits on the GPU."""
        if self.settings.offload != "model" or self.device.type != "cuda":
            return
        on, off = (self.transformer, self.vae.module) if which == "transformer" else (self.vae.module, self.transformer)
        off.to("cpu")
        on.to(self.device)

    # -- the run --------------------------------------------------------------------------------
    def generate(
        self,
        ring: CameraRing,
        vertices: torch.Tensor,
        flame: Flame,
        params: FlameParams,
        ref_params: FlameParams,
        ref_camera: Camera,
        ref_image: np.ndarray,
        out_views_dir: str | Path,
        state_dir: str | Path,
        progress: Callable[[int, int], None] | None = None,
        check: Callable[[], None] | None = None,
        log: Callable[[str], None] | None = None,
        ref_outcrop: np.ndarray | None = None,
        executor: Any = None,
    ) -> dict[str, Any]:
        """Generate every view of ``ring`` for the animation ``params`` (F = 1 + 4k frames).

        ``vertices (F, V, 3)``: the head posed per frame (checked against ``params``); ``ref_params``: one
        frame, the reference pose; ``ref_camera``/``ref_image``: the reference crop camera and uint8
        (H, W, 3) crop on white, the same size as the ring's images; ``ref_outcrop``: its (H, W) out-crop
        mask (1 = photo, 0 = padding), None = all photo. ``executor``: how the passes run
        (:mod:`backend.executors`; None: here, in plan order). Returns a summary dict.
        """
        s = self.settings
        log = log or (lambda _m: None)
        t_start = time.time()
        F = int(params.num_frames)
        if tuple(vertices.shape[:1]) != (F,) or vertices.ndim != 3:
            raise bad_input(f"vertices must be (F={F}, V, 3) like the animation, got {tuple(vertices.shape)}")
        sizes = {(c.height, c.width) for c in ring.cameras}
        if len(sizes) != 1:
            raise bad_input(f"all ring cameras must have one image size for the MMVDM, got {sorted(sizes)}")
        (H, W), = sizes
        if (ref_camera.height, ref_camera.width) != (H, W) or tuple(np.shape(ref_image)[:2]) != (H, W):
            raise bad_input(f"the reference crop ({np.shape(ref_image)[:2]}, camera {ref_camera.height}x"
                            f"{ref_camera.width}) must match the ring's {H}x{W} images")
        if H != W or H % 16:
            raise bad_input(f"the MMVDM needs square images whose side is a multiple of 16, got {H}x{W}")
        if s.sampler == "preview" and H % (16 * s.preview_factor):
            raise bad_input(f"the preview sampler needs images divisible by {16 * s.preview_factor}, got {H}")
        plan = build_plan(ring, F, s.steps_key, s.steps_other, window_frames=s.window_frames,
                          context_frames=s.context_frames)
        check_plan(plan, len(ring), F)
        log("MMVDM plan:\n" + describe_plan(plan, ring))

        stages: list[tuple[str, list[Pass], int]] = []
        if s.sampler == "preview":
            dense = CameraRing(cameras=ring.cameras, key_indices=list(range(len(ring))), clusters=[], cluster_keys=[],
                               center=ring.center)
            n_prev = s.preview_steps or max(1, s.steps_other // 5)
            stages.append(("preview", build_plan(dense, F, n_prev, n_prev, window_frames=s.window_frames,
                                                 context_frames=s.context_frames), s.preview_factor))
            if s.refine_strength > 0:
                stages.append(("final", plan, 1))
        else:
            stages.append(("final", plan, 1))

        est = self.check_memory(plan, ring, H, log)
        state_dir, out_views_dir = Path(state_dir), Path(out_views_dir)
        self._prepare_state(state_dir, out_views_dir, ring, F, H, log)
        device = s.resolved_device()
        if getattr(executor, "name", "local") == "local":  # other executors load the model in their workers
            self._load(device, log)

        run = PassRunner(self, ring, flame, params, ref_params, ref_camera, ref_image, ref_outcrop, state_dir,
                   out_views_dir, check, log, H)
        total = sum(run.pass_steps(tag, p) for tag, pl, _f in stages for p in pl)
        run.progress_total, run.progress_cb = total, progress
        if executor is not None:
            run.executor = executor
        for tag, pl, factor in stages:
            run.run_stage(tag, pl, factor, output=(tag == "final" or s.refine_strength == 0))
        missing = [c.name for c in ring.cameras if not (out_views_dir / c.name).is_dir()]
        if missing:  # pragma: no cover - a bug, not a user error
            raise MVP4DError("INTERNAL", f"MMVDM finished but views {missing[:4]} were not written")
        summary = {"passes": sum(len(pl) for _t, pl, _f in stages), "steps": total, "memory": est,
                   "time_s": round(time.time() - t_start, 2), "settings": asdict(s)}
        log(f"MMVDM done: {summary['passes']} passes, {total} steps in {summary['time_s']} s")
        return summary

    def _fingerprint(self, ring: CameraRing, F: int, res: int) -> dict[str, Any]:
        s = asdict(self.settings)
        for k in ("device", "offload", "vae_slicing", "vae_tiling", "cfg_passes"):  # memory-only switches
            s.pop(k)
        return {"settings": s, "frames": F, "resolution": res, "views": [c.name for c in ring.cameras],
                "keys": list(ring.key_indices), "clusters": [list(c) for c in ring.clusters],
                "weights": None if self.weights is None else str(self.weights)}

    def _prepare_state(self, state_dir: Path, out_views_dir: Path, ring: CameraRing, F: int, res: int, log) -> None:
        fp = self._fingerprint(ring, F, res)
        path = state_dir / "settings.json"
        if path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
            if old == fp:
                return
            log("MMVDM settings changed since the last run: starting the MMVDM passes over")
            remove_inside(state_dir, state_dir.parent)  # our own checkpoints, re-checked before deletion
            for cam in ring.cameras:  # views of the old run must not mix with the new one
                view = confine(out_views_dir, "", cam.name, where=f"camera name {cam.name!r}")
                if view.is_dir():
                    remove_inside(view, out_views_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, fp)

