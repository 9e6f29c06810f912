"""Small-scale reproduction of the paper's CFG ablation (Table 7): ``python -m backend experiment cfg-ablation``.

What it does (every phase is cached in ``--out`` and skipped when already complete, so a re-run resumes):

1. **data** — a synthetic training set (:func:`generate_synthetic_dataset`: ``identities`` random toy-head
   identities × {monocular video, multi-view images, multi-view video}) and a held-out set of *new*
   identities (:func:`generate_heldout_set`: a frontal ``ref`` view + the 8 key directions of the "120"
   ring, 13 frames);
2. **vae** — the stand-in for CogVideoX's frozen VAE (:mod:`.autoencoder`), trained on the training set;
3. **train** — a small MMVDM from scratch with the trainer (:mod:`.trainer`) and the ``small`` curriculum
   (Table 3's structure at 64 px; iterations rescaled to the preset), EMA weights exported. On the CPU the
   preset uses the trainer's latent caching (``pool_batches``: each stage samples, renders and VAE-encodes
   the micro-batches of its first P steps once and cycles them, with fresh t and noise) because encoding
   dominates a CPU step ~10×, and a time limit that stops training early (recorded) on a slow machine;
4. **evaluate** — for every held-out identity: the reference image is the ``ref`` view at frame 0, the
   targets are the 8 ring views over frames 4–12 (another frame *and* viewpoint, like the paper's
   self-reenactment protocol); the views are generated **through the real plan and generator**
   (:class:`MMVDMGenerator`: key views by mode 1, clusters by mode 2) and compared with the rendered
   ground truth (PSNR, SSIM on the 64 × 64 crops, white background included). Settings as Table 7:
   CFG ``none`` / ``conventional`` / ``multiview`` × V = 4 / 8 views generated jointly per pass
   (V = 8: the 8 views form one mode-1 pass; V = 4: 4 key views by farthest-point sampling in one
   mode-1 pass, the other 4 in clusters of 2 with their 2 nearest key views, 4 views per mode-2 pass).
   The same plan with the *untrained* (initial) transformer gives the baseline, and encode → decode of
   the ground truth gives the VAE's ceiling.

Results go to ``<out>/results.json`` and, as a Markdown section for the preset, into
``docs/experiments.md`` (``--doc``). Presets: ``smallest`` (the CPU setting, ≤ 20 min on 2 shared cores
with one torch thread) and ``larger`` (more data, steps and held-out identities; for a GPU or a patient
CPU). Any preset value can be overridden (``--train-steps``, ``--identities``, …).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import EXIT_ERROR, MVP4DError
from ..fsutil import write_json_atomic
from .experiment_eval import eval_cases, evaluation_ring, generate_case, vae_ceiling
from .experiment_report import write_doc

__all__ = ["ExperimentSettings", "PRESETS", "run_cfg_ablation", "evaluation_ring", "main"]


@dataclass
class ExperimentSettings:
    preset: str = "smallest"
    seed: int = 0
    identities: int = 24  # training identities (× 3 sequences)
    heldout: int = 4
    image_size: int = 96  # rendered frames (the reader crops the head to `size`)
    size: int = 64  # training / evaluation crop, pixels
    multiview_video_views: int = 6
    multiview_video_frames: int = 13
    vae_steps: int = 300
    vae_width: int = 16
    transformer: str = "small"
    train_steps: int = 2400  # total optimizer steps (the small curriculum's stages rescaled to it)
    batch_size: int = 8
    pool_batches: int | None = 80  # latent caching: steps' batches per stage sampled + encoded once, then cycled
    ema_decay: float = 0.995
    steps_key: int = 50
    steps_other: int = 25
    cfg_modes: tuple[str, ...] = ("none", "conventional", "multiview")
    views: tuple[int, ...] = (4, 8)
    untrained_settings: tuple[tuple[str, int], ...] = (("multiview", 8), ("none", 8))
    threads: int = 1
    num_workers: int = 1
    train_time_limit_min: float | None = 10.0  # stop training early (recorded) if the CPU is slower than planned


PRESETS: dict[str, ExperimentSettings] = {
    "smallest": ExperimentSettings(),
    "larger": ExperimentSettings(preset="larger", identities=48, heldout=8, vae_steps=1500, vae_width=32,
                                 train_steps=6000, batch_size=16, ema_decay=0.999, steps_key=100, steps_other=50,
                                 untrained_settings=tuple((c, v) for c in ("none", "conventional", "multiview")
                                                          for v in (4, 8)),
                                 num_workers=4, threads=4, train_time_limit_min=None, pool_batches=None),
}


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


def _curriculum(s: ExperimentSettings):
    from .curriculum import Curriculum, load_curriculum

    base = load_curriculum("small")
    total = base.total_iterations
    its = [max(1, int(round(st.iterations * s.train_steps / total))) for st in base.stages]
    its[-1] = max(1, s.train_steps - sum(its[:-1]))
    d = base.scaled(iterations=its, batch_size=s.batch_size).to_json()
    for st in d["stages"]:
        st["warmup_steps"] = min(st["warmup_steps"], max(0, st["iterations"] // 10))
        st["resolutions"] = [f"{r.rsplit('x', 1)[0]}x{s.size}" for r in st["resolutions"]]  # the preset's crop size
    return Curriculum.from_json(d)


def run_cfg_ablation(out: str | Path, settings: ExperimentSettings, *, log: Callable[[str], None] | None = None,
                     doc: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) the experiment in ``out``; returns the results dict (also ``out/results.json``)."""
    from diffusers import AutoencoderKLCogVideoX

    from ..flame import Flame, load_flame
    from ..mmvdm.transformer import MMVDMTransformer
    from ..mmvdm.weights import MMVDMComponents, load_mmvdm
    from .autoencoder import small_vae_config, train_vae
    from .data import TrainingDataset
    from .synthetic import SyntheticConfig, generate_heldout_set, generate_synthetic_dataset
    from .trainer import TrainConfig, Trainer, named_transformer

    s = settings
    say = log or (lambda m: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(s.threads))
    times: dict[str, float] = {}
    t_all = time.time()

    # 1. data
    t0 = time.time()
    syn = SyntheticConfig(identities=s.identities, seed=s.seed, image_size=s.image_size,
                          multiview_video_views=s.multiview_video_views, multiview_video_frames=s.multiview_video_frames)
    train_root = generate_synthetic_dataset(out / "data" / "train", syn,
                                            progress=lambda d, n: say(f"data {d}/{n}") if d % 12 == 0 else None)
    held_root = generate_heldout_set(out / "data" / "heldout", s.heldout, s.seed, image_size=s.image_size)
    times["data_s"] = round(time.time() - t0, 1)
    say(f"data ready in {times['data_s']} s")

    # 2. VAE stand-in
    t0 = time.time()
    vae_dir = out / "vae"
    stats_path = out / "vae_stats.json"
    if not (vae_dir / "config.json").is_file() or not stats_path.is_file():
        vstats = train_vae(TrainingDataset(train_root), vae_dir, steps=s.vae_steps, size=s.size, seed=s.seed,
                           config=small_vae_config(named_transformer(s.transformer)["in_channels"], s.vae_width),
                           log=say, replace=True)  # the experiment's own folder (a killed run's VAE)
        write_json_atomic(stats_path, vstats)
    vstats = json.loads(stats_path.read_text())
    times["vae_s"] = round(time.time() - t0, 1)

    # 3. train
    t0 = time.time()
    cur = _curriculum(s)
    run_dir = out / "run"
    cfg = TrainConfig(run_dir=str(run_dir), train_data=[str(train_root)], curriculum=cur.to_json(),
                      model={"init": "scratch", "transformer": s.transformer, "vae": str(vae_dir), "init_seed": s.seed},
                      micro_batch_size=s.batch_size, seed=s.seed, gradient_checkpointing=False,
                      optimizer={"betas": [0.9, 0.99], "weight_decay": 1e-4, "eps": 1e-8}, ema={"decay": s.ema_decay},
                      checkpoint_every=200, keep_checkpoints=2, log_every=25,
                      validation={"every": max(50, s.train_steps // 5), "batches": 2}, num_workers=s.num_workers,
                      device="cpu" if not torch.cuda.is_available() else None, threads=s.threads,
                      pool_batches=s.pool_batches)
    final = run_dir / "final"
    trained_steps = None
    train_status = "finished (cached)"
    if not (final / "mmvdm.json").is_file():
        trainer = Trainer(cfg, log=say)
        summary = trainer.run(resume="auto", time_limit_s=None if not s.train_time_limit_min
                              else 60.0 * s.train_time_limit_min)
        if summary["status"] != "finished":  # time limit: export what was trained
            trainer.export()
        trained_steps = summary["step"]
        train_status = summary["status"]
    comp = load_mmvdm(final)
    info = comp.info
    trained_steps = int(info.get("steps", trained_steps or 0))
    times["train_s"] = round(time.time() - t0, 1)
    log_path = run_dir / "logs" / "train.jsonl"
    records = [json.loads(x) for x in log_path.read_text().splitlines()] if log_path.is_file() else []
    vals = [r for r in records if r.get("type") == "val"]

    # 4. evaluate
    t0 = time.time()
    flame = Flame(load_flame("toy"))
    cases = eval_cases(held_root, s.size)
    vae = AutoencoderKLCogVideoX.from_pretrained(str(vae_dir), use_safetensors=True, local_files_only=True).eval()
    trained = MMVDMComponents(comp.transformer.float().eval(), vae, comp.scheduler_config, info)
    torch.manual_seed(s.seed)
    untrained_model = MMVDMTransformer.from_config(named_transformer(s.transformer)).eval()
    untrained = MMVDMComponents(untrained_model, vae, comp.scheduler_config, {})
    ceiling = vae_ceiling(vae, cases)

    def evaluate(components, guidance, views, tag):
        per = []
        for c in cases:
            m = generate_case(components, c, flame, out / "eval" / f"{tag}-{guidance}-v{views}" / c.name,
                              guidance=guidance, views=views, seed=s.seed, steps_key=s.steps_key,
                              steps_other=s.steps_other)
            per.append(m)
            say(f"eval {tag} {guidance} V={views} {c.name}: PSNR {m['psnr']:.2f} SSIM {m['ssim']:.3f} ({m['time_s']} s)")
        return {"guidance": guidance, "views": views, "psnr": float(np.mean([m["psnr"] for m in per])),
                "ssim": float(np.mean([m["ssim"] for m in per])), "psnr_std": float(np.std([m["psnr"] for m in per])),
                "passes": per[0]["passes"], "per_identity": per}

    rows = [evaluate(trained, g, v, "trained") for v in s.views for g in s.cfg_modes]
    base_rows = [evaluate(untrained, g, v, "untrained") for g, v in s.untrained_settings]
    times["eval_s"] = round(time.time() - t0, 1)
    times["total_s"] = round(time.time() - t_all, 1)

    gains = []
    for b in base_rows:
        r = next(r for r in rows if (r["guidance"], r["views"]) == (b["guidance"], b["views"]))
        gains.append({"guidance": b["guidance"], "views": b["views"], "trained_psnr": r["psnr"],
                      "untrained_psnr": b["psnr"], "gain_db": r["psnr"] - b["psnr"]})
    results = {
        "experiment": "cfg-ablation", "settings": asdict(s), "curriculum": cur.to_json(),
        "model": {"transformer": s.transformer, "config": named_transformer(s.transformer),
                  "parameters": sum(p.numel() for p in trained.transformer.parameters()), "trained_steps": trained_steps,
                  "planned_steps": cur.total_iterations, "train_status": train_status},
        "vae": vstats, "vae_ceiling": ceiling, "validation_loss": [(v["step"], v["val_loss"]) for v in vals],
        "rows": rows, "untrained": base_rows, "gains": gains,
        "acceptance_3db": bool(gains) and all(g["gain_db"] >= 3.0 for g in gains),
        "times": times, "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                    "device": "cuda" if torch.cuda.is_available() else "cpu",
                                    "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()},
        "heldout": [c.name for c in cases], "data": asdict(syn),
        "overrides": "".join(f" --{k.replace('_', '-')} {v}" for k, v in asdict(s).items()
                             if s.preset in PRESETS and v != getattr(PRESETS[s.preset], k)),
    }
    write_json_atomic(out / "results.json", results)
    if doc:
        write_doc(Path(doc), results)
    say(f"cfg-ablation done in {times['total_s']} s: {out / 'results.json'}")
    return results


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend experiment cfg-ablation",
                                description="train a small MMVDM on synthetic data and evaluate CFG modes (Table 7)")
    p.add_argument("--preset", default="smallest", choices=sorted(PRESETS))
    p.add_argument("--out", default=None, help="working folder (default: out/experiments/cfg-ablation-<preset>)")
    p.add_argument("--doc", default="docs/experiments.md", help="Markdown file to write the results into ('' = none)")
    for f in ("seed", "identities", "heldout", "vae_steps", "train_steps", "batch_size", "steps_key", "steps_other",
              "threads", "num_workers", "pool_batches"):
        p.add_argument("--" + f.replace("_", "-"), type=int, default=None)
    p.add_argument("--train-time-limit-min", type=float, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    from ..events import EventSink

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "cfg-ablation":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    s = PRESETS[args.preset]
    over = {k: v for k, v in vars(args).items() if k not in ("preset", "out", "doc") and v is not None}
    s = replace(s, **over)
    out = Path(args.out or f"out/experiments/cfg-ablation-{s.preset}")
    sink = EventSink(None, stream=sys.stdout)
    try:
        res = run_cfg_ablation(out, s, log=lambda m: sink.log(m, stage="experiment"), doc=args.doc or None)
    except MVP4DError as e:
        sink.error(e, stage="experiment")
        return EXIT_ERROR
    sink.done({"results": str(out / "results.json"), "doc": args.doc,
               "acceptance_3db": str(res["acceptance_3db"])})
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

