"""``docs/experiments.md``: the CFG-ablation experiment's results (:mod:`.experiment`) as a section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..fsutil import write_text_atomic


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
