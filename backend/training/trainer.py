"""The MMVDM trainer (command line: ``python -m backend train --config FILE``, :mod:`.train_cli`).

Runs on ``accelerate``: one CPU process for tests, one GPU, or many GPUs / hosts with
``accelerate launch -m backend train --config FILE`` (DDP; every rank holds the whole model and optimizer,
which fits the 2B model on 80 GB GPUs with gradient checkpointing, like the paper's 8 × H100).

The config (JSON or TOML) and its format: :mod:`.config`.

One optimizer step: the curriculum picks the stage (learning rate, global batch, modes, resolutions) for
the step; each micro-batch draws its resolution and per-sample modes/dropout
(:meth:`Curriculum.draw`), samples items (:class:`MultiDataset`), renders the conditioning maps (data
workers), encodes views and reference with the frozen VAE (device), draws t and ε, and back-propagates
the v-prediction loss (:mod:`.objective`) scaled by 1/accumulation; gradients are synchronised on the
last micro-batch only, clipped, AdamW steps, EMA updates.

Reproducibility and exact resume: every random number of a micro-batch (curriculum draw, data sampling,
timesteps, noise) comes from generators seeded with (seed, step, micro-step, rank) and the learning rate
is a function of the step, so a step depends only on the weights and optimizer state, which checkpoints
restore exactly (:mod:`.checkpoint`). Resuming from step N therefore reproduces the uninterrupted loss
curve (checked to 1e-5 in the tests; bit for bit on CPU). SIGTERM/SIGINT stop at the next step boundary
after writing a checkpoint (preemptible clusters).

The unused text projection of CogVideoX (no text tokens) is frozen, so DDP sees a gradient for every
trainable parameter. The VAE runs in bf16 on CUDA (fp32 on the CPU), frozen, posterior mode.

Logs: ``<run_dir>/logs/train.jsonl``, one JSON object per line: ``{"type": "train", "step", "stage",
"loss", "lr", "grad_norm", "resolution", "modes", "samples_per_s", ...}`` every ``log_every`` steps
and ``{"type": "val", "step", "val_loss"}``; ``step`` counts optimizer steps done. On resume the records
after the checkpoint are dropped, so the file is the uninterrupted run's log.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import MVP4DError
from ..fsutil import write_json_atomic
from .checkpoint import EMA, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import NAMED_TRANSFORMERS, TrainConfig, build_model, load_config, named_transformer, step_seed
from .curriculum import Curriculum, load_curriculum
from .data import MultiDataset, TrainingDataset
from .objective import NUM_TRAIN_TIMESTEPS, diffusion_loss, encode_batch
from .stream import PoolIterator, StepBatches

__all__ = ["TrainConfig", "Trainer", "train", "load_config", "NAMED_TRANSFORMERS", "build_model", "step_seed",
           "named_transformer"]


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------


def _reset_single_process_state(mixed_precision: str, cpu: bool) -> None:
    """accelerate keeps one process-wide state; a second trainer in the same (non-distributed) process
    with another precision or device (tests, notebooks, the experiment) needs it reset first."""
    from accelerate.state import AcceleratorState, DistributedType, PartialState

    if not AcceleratorState._shared_state:
        return
    st = AcceleratorState()
    if st.distributed_type != DistributedType.NO:
        return
    if st.mixed_precision != mixed_precision or (cpu and st.device.type != "cpu"):
        AcceleratorState._reset_state(reset_partial_state=(cpu and PartialState().device.type != "cpu"))


class _Stop:
    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):  # noqa: ARG002
        self.requested = True


class Trainer:
    """See the module docstring. ``log(message)`` receives human-readable progress lines."""

    def __init__(self, config: TrainConfig, *, log: Callable[[str], None] | None = None):
        from accelerate import Accelerator

        from ..mmvdm.schedule import make_scheduler
        from ..mmvdm.vae import MMVDMVae

        self.cfg = config
        self.say = log or (lambda m: None)
        if config.threads:
            torch.set_num_threads(int(config.threads))
        cpu = config.device == "cpu" or not torch.cuda.is_available()
        mp = config.mixed_precision
        if mp == "auto":
            mp = "no" if cpu else "bf16"
        if cpu and mp == "fp16":
            self.say("fp16 mixed precision needs CUDA: using fp32 on the CPU")
            mp = "no"
        _reset_single_process_state(mp, cpu)
        self.acc = Accelerator(cpu=cpu, mixed_precision=mp)
        self.device = self.acc.device
        self.run_dir = Path(config.run_dir)
        self.curriculum = load_curriculum(config.curriculum)
        self.world = self.acc.num_processes
        for i, s in enumerate(self.curriculum.stages):
            per = config.micro_batch_size * self.world
            if s.batch_size % per:
                raise MVP4DError("BAD_INPUT", f"stage {s.name}: batch_size {s.batch_size} is not a multiple of "
                                 f"micro_batch_size × processes = {config.micro_batch_size} × {self.world}",
                                 "Change micro_batch_size or the number of processes so they divide the batch size.")

        weights = config.data_weights or [1.0] * len(config.train_data)
        self.data = MultiDataset([TrainingDataset(p, weight=w, max_reference_angle=config.max_reference_angle)
                                  for p, w in zip(config.train_data, weights)])
        self.data.check_resolutions([(r.views, r.frames) for r in self.curriculum.resolutions], config.frame_stride)

        transformer, vae, sched_cfg = build_model(config, self.say)
        self.scheduler_config = sched_cfg
        self.alphas_cumprod = make_scheduler(sched_cfg).alphas_cumprod.float().clone()
        transformer = transformer.float().train()
        # the text projection is unused (no text tokens): frozen, so DDP does not wait for its gradients
        transformer.patch_embed.text_proj.requires_grad_(False)
        if config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        if config.attention_backend:
            transformer.set_attention_backend(config.attention_backend)
        vae.requires_grad_(False).eval()
        vae_dtype = torch.float32 if cpu else torch.bfloat16
        if vae.dtype != vae_dtype:
            vae.to(dtype=vae_dtype)
        vae.to(self.device)
        self.vae = MMVDMVae(vae)
        if config.vae_slicing:
            self.vae.enable_slicing()
        opt = dict(config.optimizer)
        opt["betas"] = tuple(opt.get("betas", (0.9, 0.95)))
        optimizer = torch.optim.AdamW([p for p in transformer.parameters() if p.requires_grad],
                                      lr=self.curriculum.learning_rate(0), **opt)
        self.model, self.optimizer = self.acc.prepare(transformer, optimizer)
        self.ema = EMA(self.raw_model, **config.ema) if config.ema else None
        self.total_steps = self.curriculum.total_iterations
        self.end_step = min(self.total_steps, config.max_steps) if config.max_steps else self.total_steps
        self.start_step = 0
        self.log_path = self.run_dir / "logs" / "train.jsonl"
        self._val_batches: list[dict[str, Any]] | None = None
        self.stop = _Stop()
        self.history: list[dict[str, Any]] = []
        self._pool: dict[tuple[int, int], dict[str, Any]] = {}
        self._tb = self._open_tensorboard()

    @property
    def raw_model(self):
        return self.acc.unwrap_model(self.model)

    def accumulation(self, step: int) -> int:
        return self.curriculum.stage_at(step)[1].batch_size // (self.cfg.micro_batch_size * self.world)

    # -- resume -----------------------------------------------------------------------------------
    def resume(self, which: str | Path | None = "auto") -> int:
        """Restore the latest (``"auto"``) or the given checkpoint; returns the step to continue from."""
        if which is None or which == "none":
            return self.start_step
        path = latest_checkpoint(self.run_dir) if which == "auto" else Path(which)
        if path is None:
            return self.start_step
        state = load_checkpoint(path, self.raw_model, self.optimizer, self.ema)
        if state.get("config_fingerprint") not in (None, self.cfg.fingerprint()):
            self.say(f"warning: {path.name} was written with a different config (data, curriculum, model, seed "
                     "or optimizer); resuming anyway")
        self.start_step = int(state["step"])
        self.say(f"resumed from {path} at step {self.start_step}")
        if self.acc.is_main_process and self.log_path.is_file():
            keep = []
            for line in self.log_path.read_text().splitlines():
                try:
                    if int(json.loads(line).get("step", 0)) <= self.start_step:
                        keep.append(line)
                except ValueError:
                    continue
            self.log_path.write_text("".join(x + "\n" for x in keep))
        return self.start_step

    # -- pieces -----------------------------------------------------------------------------------
    def _noise(self, step: int, micro: int, shape, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator("cpu").manual_seed(step_seed(self.cfg.seed, step, micro, self.acc.process_index))
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=g)
        eps = torch.randn(shape, generator=g)
        return t.to(self.device), eps.to(self.device)

    def _loss(self, batch: dict[str, Any], step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        if "latents" in batch:  # pooled: encoded once
            z, ref = batch["latents"].to(self.device), batch["reference_latent"].to(self.device)
        else:
            z, ref = encode_batch(self.vae, batch, self.device)
        t, eps = self._noise(step, micro, z.shape, z.shape[0])
        with self.acc.autocast():
            return diffusion_loss(self.model, z, ref, batch["conditioning"].to(self.device),
                                  batch["reference_conditioning"].to(self.device), batch["clean_mask"], t, eps,
                                  self.alphas_cumprod)

    def pool_source(self, step: int) -> int:
        """The step whose micro-batches ``step`` reuses with ``pool_batches`` (its stage's first P steps, cycled)."""
        _, _, local = self.curriculum.stage_at(step)
        return step - local + local % int(self.cfg.pool_batches)

    def _pooled(self, step: int, micro: int) -> dict[str, Any]:
        key = (self.pool_source(step), micro)
        if key not in self._pool:
            stream = StepBatches(self.data, self.curriculum, self.cfg.seed, self.cfg.micro_batch_size,
                                 self.acc.process_index, 0, 0, self.accumulation, self.cfg.frame_stride)
            b = stream.make(*key)
            z, ref = encode_batch(self.vae, b, self.device)
            self._pool[key] = {k: v for k, v in b.items() if k not in ("images", "reference")} | {
                "latents": z.cpu(), "reference_latent": ref.cpu()}
        return {**self._pool[key], "step": step, "micro": micro}

    def _loader(self, start: int, end: int):
        if self.cfg.pool_batches:
            return PoolIterator(self, start, end)
        stream = StepBatches(self.data, self.curriculum, self.cfg.seed, self.cfg.micro_batch_size,
                             self.acc.process_index, start, end, self.accumulation, self.cfg.frame_stride)
        nw = int(self.cfg.num_workers)
        return iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=nw, pin_memory=self.device.type == "cuda",
                                                prefetch_factor=2 if nw else None, persistent_workers=False))

    def validation_batches(self) -> list[dict[str, Any]]:
        """Fixed validation micro-batches (built once): the final stage's resolutions, modes as drawn, no dropout."""
        if self._val_batches is None:
            v = self.cfg.validation or {}
            n = int(v.get("batches", 2))
            seed = int(v.get("seed", 1234))
            data = self.data
            if v.get("data"):
                data = MultiDataset([TrainingDataset(p) for p in v["data"]])
            cur = Curriculum.from_json({**self.curriculum.to_json(), "conditioning_dropout": 0.0})
            last = self.total_steps - 1
            self._val_batches = []
            for i in range(n):
                stream = StepBatches(data, cur, seed, self.cfg.micro_batch_size, 0, 0, 0, lambda s: 1,
                                     self.cfg.frame_stride)
                b = stream.make(last, i)
                b["val_index"] = i
                self._val_batches.append(b)
        return self._val_batches

    @torch.no_grad()
    def validation_loss(self) -> float:
        self.model.eval()
        losses = []
        for b in self.validation_batches():
            z, ref = encode_batch(self.vae, b, self.device)
            g = torch.Generator("cpu").manual_seed(step_seed(int((self.cfg.validation or {}).get("seed", 1234)),
                                                             b["val_index"], 7))
            t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (z.shape[0],), generator=g).to(self.device)
            eps = torch.randn(z.shape, generator=g).to(self.device)
            with self.acc.autocast():
                loss, _ = diffusion_loss(self.model, z, ref, b["conditioning"].to(self.device),
                                         b["reference_conditioning"].to(self.device), b["clean_mask"], t, eps,
                                         self.alphas_cumprod)
            losses.append(float(loss))
        self.model.train()
        val = float(np.mean(losses))
        return float(self.acc.reduce(torch.tensor(val, device=self.device), "mean"))

    def _record(self, rec: dict[str, Any]) -> None:
        self.history.append(rec)
        if self.acc.is_main_process:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
            if self._tb is not None:
                for k in ("loss", "val_loss", "lr", "grad_norm", "samples_per_s"):
                    if isinstance(rec.get(k), (int, float)):
                        self._tb.add_scalar(f"{rec['type']}/{k}", rec[k], rec["step"])
                self._tb.flush()

    def _open_tensorboard(self):
        if not (self.cfg.tensorboard and self.acc.is_main_process):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise MVP4DError("BAD_INPUT", "tensorboard = true but the tensorboard package is not installed",
                             "pip install tensorboard, or use the JSON-lines log (logs/train.jsonl).") from exc
        return SummaryWriter(str(self.run_dir / "logs" / "tensorboard"))

    def save(self, step: int) -> Path | None:
        self.acc.wait_for_everyone()
        path = None
        if self.acc.is_main_process:
            idx, stage, _ = self.curriculum.stage_at(max(0, step - 1))
            path = save_checkpoint(self.run_dir, step, self.raw_model, self.optimizer, self.ema,
                                   {"seed": self.cfg.seed, "stage": stage.name, "stage_index": idx,
                                    "config_fingerprint": self.cfg.fingerprint(), "world_size": self.world,
                                    "total_steps": self.total_steps}, keep=self.cfg.keep_checkpoints)
            self.say(f"checkpoint {path}")
        self.acc.wait_for_everyone()
        return path

    def export(self, folder: str | Path | None = None) -> Path | None:
        """Write the trained model (EMA weights when enabled) as an MMVDM weights folder (``run_dir/final``)."""
        import copy

        from ..mmvdm.weights import save_mmvdm

        if not self.acc.is_main_process:
            return None
        model = self.raw_model
        if self.ema is not None:
            model = copy.deepcopy(model)
            self.ema.copy_to(model)
        model = model.to("cpu") if self.ema is not None else model
        folder = Path(folder or self.run_dir / "final")
        vae = self.vae.vae
        dtype = vae.dtype
        if dtype != torch.float32:
            vae.to(torch.float32)
        save_mmvdm(folder, model, vae, self.scheduler_config,
                   {"trained_by": "backend.training", "steps": self.start_step, "curriculum": self.curriculum.name,
                    "config_fingerprint": self.cfg.fingerprint(), "ema": self.ema is not None})
        if dtype != torch.float32:
            vae.to(dtype)
        if model is self.raw_model:
            model.to(self.device)
        return folder

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, resume: str | Path | None = "auto", *, stop_after: int | None = None,
            time_limit_s: float | None = None, install_signals: bool = False) -> dict[str, Any]:
        """Train from the resumed step to the curriculum's end, or until ``max_steps`` / ``stop_after`` steps /
        ``time_limit_s`` seconds (then status "stopped" with a checkpoint; resuming continues the same curve)."""
        deadline = None if time_limit_s is None else time.time() + float(time_limit_s)
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.acc.is_main_process:
            write_json_atomic(self.run_dir / "config.json", {**asdict(cfg), "resolved_curriculum": self.curriculum.to_json()})
        start = self.resume(resume)
        end = self.end_step if stop_after is None else min(self.end_step, start + int(stop_after))
        if install_signals:
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        if self.ema is not None:
            self.ema.to(self.device)
        if cfg.validation and start == 0:
            self._record({"type": "val", "step": 0, "val_loss": self.validation_loss()})
        loader = self._loader(start, end)
        t_last, n_last = time.time(), 0
        step = saved = start
        status = "finished"
        stage_ends = set(np.cumsum([s.iterations for s in self.curriculum.stages]).tolist())
        self.model.train()
        while step < end:
            if self.stop.requested:
                status = "interrupted"
                break
            if deadline is not None and time.time() > deadline:
                self.say(f"time limit reached after step {step}")
                end = step
                break
            idx, stage, _ = self.curriculum.stage_at(step)
            lr = self.curriculum.learning_rate(step)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            accum = self.accumulation(step)
            losses, modes, res = [], [], None
            for micro in range(accum):
                batch = next(loader)
                if (batch["step"], batch["micro"]) != (step, micro):  # pragma: no cover - a bug
                    raise MVP4DError("INTERNAL", f"data stream out of order: got {batch['step']}/{batch['micro']}, "
                                     f"expected {step}/{micro}")
                res = batch["resolution"]
                modes += [m["mode"] for m in batch["meta"]]
                sync = micro == accum - 1
                ctx = contextlib.nullcontext() if sync else self.acc.no_sync(self.model)
                with ctx:
                    loss, _ = self._loss(batch, step, micro)
                    self.acc.backward(loss / accum)
                losses.append(loss.detach())
            grad_norm = self.acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm) \
                if cfg.max_grad_norm else None
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.raw_model, step)
            step += 1
            self.start_step = step
            loss_val = float(self.acc.reduce(torch.stack(losses).mean(), "mean"))
            if not math.isfinite(loss_val):
                raise MVP4DError("INTERNAL", f"training loss became {loss_val} at step {step}",
                                 "Lower the learning rate or check the data; resume from the last checkpoint.")
            n_last += accum * cfg.micro_batch_size * self.world
            if step % max(1, cfg.log_every) == 0 or step == end:
                dt = max(time.time() - t_last, 1e-9)
                self._record({"type": "train", "step": step, "stage": stage.name, "loss": loss_val, "lr": lr,
                              "grad_norm": None if grad_norm is None else float(grad_norm), "resolution": res,
                              "modes": modes, "samples_per_s": n_last / dt, "time": time.time()})
                self.say(f"step {step}/{self.end_step} {stage.name} loss {loss_val:.4f} lr {lr:.2e} {res}")
                t_last, n_last = time.time(), 0
            else:
                self.history.append({"type": "train", "step": step, "loss": loss_val})
            if cfg.validation and step % int(cfg.validation.get("every", 500)) == 0:
                self._record({"type": "val", "step": step, "val_loss": self.validation_loss()})
            if step % max(1, cfg.checkpoint_every) == 0 or step in stage_ends or step == end:
                self.save(step)
                saved = step
        if saved != step:
            self.save(step)
        if status != "interrupted" and step < self.end_step:
            status = "stopped"  # stop_after / time limit: a checkpoint was written, the run continues on resume
        elif status == "finished" and cfg.validation and step % int(cfg.validation.get("every", 500)) != 0:
            self._record({"type": "val", "step": step, "val_loss": self.validation_loss()})
        final = None
        if status == "finished" and step >= self.total_steps and cfg.export_final:
            final = self.export()
        return {"status": status, "step": step, "total_steps": self.total_steps, "final": None if final is None else str(final),
                "losses": [h["loss"] for h in self.history if h.get("type") == "train" and "loss" in h]}


def train(config: TrainConfig | str | Path, *, resume: str | None = "auto", log: Callable[[str], None] | None = None,
          **overrides: Any) -> dict[str, Any]:
    cfg = config if isinstance(config, TrainConfig) else load_config(config, **overrides)
    return Trainer(cfg, log=log).run(resume)


