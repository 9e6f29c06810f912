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
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import EXIT_ERROR, MVP4DError
from ..fsutil import write_json_atomic, write_text_atomic

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
# evaluation
# ---------------------------------------------------------------------------------------------


def evaluation_ring(cameras: list, center: np.ndarray, joint_views: int):
    """A :class:`CameraRing` over ``cameras`` whose plan generates ``joint_views`` views per pass (module doc)."""
    from ..cameras import CameraRing
    from ..cameras.rings import _view_direction, cluster_views, farthest_point_keys

    n = len(cameras)
    dirs = np.stack([_view_direction(c, center) for c in cameras])
    if joint_views >= n:
        return CameraRing(cameras=list(cameras), key_indices=list(range(n)), clusters=[], cluster_keys=[], center=center)
    keys = farthest_point_keys(dirs, joint_views)
    others = [i for i in range(n) if i not in keys]
    half = max(1, joint_views // 2)
    clusters = [[others[j] for j in cl] for cl in cluster_views(dirs[others], max_size=half)]
    ckeys = []
    for cl in clusters:
        m = dirs[cl].mean(0)
        m /= np.linalg.norm(m)
        ang = [math.degrees(math.acos(float(np.clip(dirs[k] @ m, -1, 1)))) for k in keys]
        ckeys.append([keys[i] for i in np.argsort(ang, kind="stable")[:half]])
    return CameraRing(cameras=list(cameras), key_indices=list(keys), clusters=clusters, cluster_keys=ckeys, center=center)


@dataclass
class EvalCase:
    name: str
    item: Any  # TrainingItem: 8 ring views × 9 frames, reference = ref view frame 0
    vertices: torch.Tensor
    center: np.ndarray


def eval_cases(heldout_root: Path, size: int, window: int = 9) -> list[EvalCase]:
    from .data import TrainingDataset

    ds = TrainingDataset(heldout_root)
    cases = []
    for i, seq in enumerate(ds.sequences):
        views = [v for v in range(seq.num_views) if seq.views[v] != "ref"]
        frames = list(range(seq.num_frames - window, seq.num_frames))
        item = ds.load(i, views, frames, seq.views.index("ref"), 0, size, per_frame_crops=False)  # ring-like cameras
        with torch.no_grad():
            verts = ds.flame(item.params).vertices
        center = verts[:, ds._head_mask].mean((0, 1)).double().numpy()
        cases.append(EvalCase(seq.name, item, verts, center))
    return cases


def _read_views(folder: Path, names: list[str], frames: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.stack([np.asarray(Image.open(folder / n / f"{f:04d}.png").convert("RGB")) for f in range(frames)])
                     for n in names])


def image_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over images (..., H, W, 3) uint8 (per image, then averaged)."""
    from ..avatar.losses import psnr, ssim

    p = torch.from_numpy(pred.reshape(-1, *pred.shape[-3:])).float() / 255.0
    t = torch.from_numpy(truth.reshape(-1, *truth.shape[-3:])).float() / 255.0
    ps = [psnr(a, b) for a, b in zip(p, t)]
    ss = [float(ssim(a, b)) for a, b in zip(p, t)]
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss))}


def generate_case(components, case: EvalCase, flame, out: Path, *, guidance: str, views: int, seed: int,
                  steps_key: int, steps_other: int) -> dict[str, Any]:
    """Run the real MMVDM plan for one held-out identity; returns metrics, plan size and time."""
    from ..fsutil import remove_inside
    from ..generators.mmvdm import MMVDMGenerator, MMVDMSettings

    it = case.item
    ring = evaluation_ring(it.cameras, case.center, views)
    settings = MMVDMSettings(seed=seed, steps_key=steps_key, steps_other=steps_other, guidance=guidance,
                             sampler="joint", dtype="fp32", device="cpu", window_frames=49, context_frames=9)
    gen = MMVDMGenerator(settings=settings, components=components)
    if out.exists():  # our own earlier attempt at this case (views/ and state/ only), never anything else
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ("views", "state"))
        if foreign:
            raise MVP4DError("OUTPUT_EXISTS", f"{out} holds files the experiment did not write ({foreign[0]!r})",
                             "Move them away or choose another --out.")
        remove_inside(out, out.parent)
    t0 = time.time()
    info = gen.generate(ring, case.vertices, flame, it.params, it.reference_params, it.reference_camera,
                        it.reference_image, out / "views", out / "state", ref_outcrop=it.reference_outcrop)
    pred = _read_views(out / "views", [c.name for c in it.cameras], it.num_frames)
    m = image_metrics(pred, it.images)
    m.update(passes=info["passes"], time_s=round(time.time() - t0, 1))
    return m


@torch.no_grad()
def vae_ceiling(vae, cases: list[EvalCase]) -> dict[str, float]:
    from ..mmvdm.vae import MMVDMVae

    w = MMVDMVae(vae)
    preds, truths = [], []
    for c in cases:
        x = torch.from_numpy(c.item.images).float().div(127.5).sub(1).permute(0, 1, 4, 2, 3)
        rec = w.decode_views(w.encode_views(x))
        preds.append(((rec.permute(0, 1, 3, 4, 2) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy())
        truths.append(c.item.images)
    return image_metrics(np.stack(preds), np.stack(truths))


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
# docs/experiments.md
# ---------------------------------------------------------------------------------------------

_DOC_HEAD = """# Experiments

Measured results of the backend's experiments, each section written by the command that produced it
(re-running a preset replaces its section). Numbers are what was measured, whichever way they came out.
"""


def format_section(r: dict[str, Any]) -> str:
    s = r["settings"]
    cur = r["curriculum"]
    label = {"none": "no CFG", "conventional": "conventional CFG", "multiview": "multi-view CFG"}
    lines = [f"## CFG ablation (paper Table 7), small scale — preset `{s['preset']}`", "",
             f"Command: `python -m backend experiment cfg-ablation --preset {s['preset']}{r.get('overrides', '')}` "
             f"(total {r['times']['total_s'] / 60:.1f} min on {r['machine']['device']}, "
             f"{r['machine']['threads']} torch thread(s); torch {r['machine']['torch']}).", "",
             "| CFG mode | V | PSNR ↑ | SSIM ↑ | passes per identity |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {label[row['guidance']]} | {row['views']} | {row['psnr']:.2f} ± {row['psnr_std']:.2f} | "
                     f"{row['ssim']:.3f} | {row['passes']} |")
    for row in r["untrained"]:
        lines.append(f"| *untrained model*, {label[row['guidance']]} | {row['views']} | {row['psnr']:.2f} ± "
                     f"{row['psnr_std']:.2f} | {row['ssim']:.3f} | {row['passes']} |")
    c = r["vae_ceiling"]
    lines.append(f"| *VAE encode → decode of the ground truth (ceiling)* | – | {c['psnr']:.2f} | {c['ssim']:.3f} | – |")
    lines += ["", "PSNR ± its standard deviation over the held-out identities; SSIM is the mean over identities.", ""]
    gains = ", ".join(f"{label[g['guidance']]} V = {g['views']}: {g['gain_db']:+.2f} dB" for g in r["gains"])
    lines.append(f"Trained vs untrained (same plan, same seeds): {gains} — the ≥ 3 dB acceptance "
                 f"{'holds' if r['acceptance_3db'] else 'does NOT hold'}.")
    vl = r["validation_loss"]
    if vl:
        lines.append(f"Validation v-loss (fixed batches): {vl[0][1]:.4f} at step {vl[0][0]} → {vl[-1][1]:.4f} at step "
                     f"{vl[-1][0]}.")
    lines += ["", "Settings:", "",
              f"- data: {s['identities']} synthetic training identities × (monocular video {r['data']['monocular_frames']} "
              f"frames, multi-view images {r['data']['multiview_image_views']} views, multi-view video "
              f"{s['multiview_video_views']} views × {s['multiview_video_frames']} "
              f"frames), rendered at {s['image_size']} px and cropped to {s['size']} px; {s['heldout']} held-out "
              f"identities ({', '.join(r['heldout'])}), reference = frontal view at frame 0, targets = the 8 key "
              "directions of the 120° ring over frames 4–12 (9 frames);",
              f"- VAE stand-in: CogVideoX-style `AutoencoderKLCogVideoX`, {r['vae']['parameters']:,} parameters, "
              f"{r['vae']['steps']} steps, scaling factor {r['vae']['scaling_factor']:.3f}, reconstruction PSNR "
              f"{r['vae']['psnr']:.2f} dB on training crops;",
              f"- MMVDM: `{s['transformer']}` transformer ({r['model']['parameters']:,} parameters: "
              f"{r['model']['config']['num_layers']} layers, {r['model']['config']['num_attention_heads']} heads × "
              f"{r['model']['config']['attention_head_dim']}, 59 conditioning channels), trained from scratch for "
              f"{r['model']['trained_steps']} of {r['model'].get('planned_steps', '?')} planned steps "
              f"({r['model'].get('train_status', '')}) at batch {s['batch_size']}, AdamW, EMA {s['ema_decay']} "
              f"(evaluated), curriculum `{cur['name']}` rescaled: " +
              "; ".join(f"{st['name']} {st['iterations']} it, lr {st['learning_rate']:g}, modes "
                        f"{'/'.join(map(str, st['modes']))}, {', '.join(st['resolutions'])}" for st in cur["stages"]) +
              f"; conditioning dropout {cur['conditioning_dropout']}; " +
              (f"latent caching: each stage cycles the micro-batches of its first {s['pool_batches']} steps "
               f"({s['pool_batches'] * s['batch_size']} items per stage, sampled, rendered and VAE-encoded once; "
               "t and noise fresh every step);" if s.get("pool_batches") else "fresh items every step;"),
              f"- sampling: the real plan through `MMVDMGenerator` (joint sampler, DDIM {s['steps_key']} steps for key "
              f"views, {s['steps_other']} for clusters; multi-view CFG scale 1.1 → 1.6 with the angle to the closest "
              "reference view, the same per-view scales for conventional CFG), seed "
              f"{s['seed']}; V = 8: one mode-1 pass of all 8 views; V = 4: a mode-1 pass of 4 farthest-point key "
              "views, then mode-2 passes of 2 views with their 2 nearest key views;",
              f"- time: data {r['times']['data_s']} s, VAE {r['times']['vae_s']} s, training {r['times']['train_s']} s, "
              f"evaluation {r['times']['eval_s']} s.", ""]
    return "\n".join(lines)


def write_doc(path: Path, results: dict[str, Any]) -> None:
    text = path.read_text(encoding="utf-8") if path.is_file() else _DOC_HEAD
    section = format_section(results)
    title = section.splitlines()[0]
    parts = text.split("\n## ")
    head, sections = parts[0], ["## " + p for p in parts[1:]]
    sections = [x for x in sections if x.splitlines()[0] != title]
    sections.append(section)
    write_text_atomic(path, head.rstrip("\n") + "\n\n" + "\n".join(x.rstrip("\n") + "\n" for x in sections))


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
