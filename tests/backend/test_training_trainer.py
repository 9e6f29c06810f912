"""The MMVDM trainer (backend/training/trainer.py) on CPU with a tiny random MMVDM and VAE: the loss falls,
stop + resume reproduces the uninterrupted curve, safetensors checkpoints with optimizer state and EMA,
initialisation from a CogVideoX folder, mixed precision and accumulation, the CLI, and data errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from backend.errors import MVP4DError
from backend.training.data import DatasetError
from backend.training.synthetic import SyntheticConfig, generate_synthetic_dataset
from backend.training.train_cli import main
from backend.training.trainer import TrainConfig, Trainer, load_config

DATA = SyntheticConfig(identities=2, seed=11, image_size=48, monocular_frames=21, multiview_image_views=6,
                       multiview_video_views=4, multiview_video_frames=9)
CURRICULUM = {
    "name": "test",
    "stages": [
        {"name": "s1", "iterations": 20, "learning_rate": 2e-3, "batch_size": 4, "modes": [1],
         "resolutions": ["1x9x32", "2x5x32", "4x1x32"]},
        {"name": "s2", "iterations": 12, "learning_rate": 1e-3, "batch_size": 4, "modes": [1, 2, 3, 4],
         "resolutions": ["1x17x32", "2x5x32", "4x1x32"]},
    ],
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn") / "train", DATA)


def _config(run_dir: Path, data_dir: Path, **kw) -> TrainConfig:
    base = dict(run_dir=str(run_dir), train_data=[str(data_dir)], curriculum=CURRICULUM, micro_batch_size=2,
                device="cpu", checkpoint_every=100, keep_checkpoints=None, log_every=1, export_final=False,
                ema={"decay": 0.9})
    base.update(kw)
    return TrainConfig(**base)


def _log(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_loss_falls_and_stop_resume_equals_uninterrupted(tmp_path, data_dir):
    val = {"every": 16, "batches": 2}
    full = Trainer(_config(tmp_path / "a", data_dir, validation=val, export_final=True))
    a = full.run(resume="none")
    assert a["status"] == "finished" and a["step"] == 32
    vals = [r for r in _log(tmp_path / "a" / "logs" / "train.jsonl") if r["type"] == "val"]
    assert [v["step"] for v in vals] == [0, 16, 32]
    drop = 1 - vals[-1]["val_loss"] / vals[0]["val_loss"]
    print(f"\nvalidation loss {vals[0]['val_loss']:.4f} -> {vals[-1]['val_loss']:.4f} ({100 * drop:.0f} % lower)")
    assert drop >= 0.30

    # stop after 13 steps (mid stage 1), resume with another data-loader worker count: same curve
    first = Trainer(_config(tmp_path / "b", data_dir, validation=val)).run(resume="none", stop_after=13)
    assert first["status"] == "stopped" and first["step"] == 13
    assert (tmp_path / "b" / "checkpoints" / "step-00000013" / "optimizer.safetensors").is_file()
    second = Trainer(_config(tmp_path / "b", data_dir, validation=val, num_workers=2)).run(resume="auto")
    assert second["step"] == 32
    la, lb = np.array(a["losses"]), np.array(first["losses"] + second["losses"])
    assert la.shape == lb.shape == (32,)
    assert np.abs(la - lb).max() <= 1e-5, np.abs(la - lb).max()
    log_a, log_b = _log(tmp_path / "a" / "logs" / "train.jsonl"), _log(tmp_path / "b" / "logs" / "train.jsonl")
    key = lambda r: (r["type"], r["step"], round(r.get("loss", r.get("val_loss")), 6))  # noqa: E731
    assert [key(r) for r in log_a] == [key(r) for r in log_b]

    # checkpoints: safetensors with the optimizer state and EMA; identical weights at the end
    ck_a, ck_b = (tmp_path / x / "checkpoints" / "step-00000032" for x in "ab")
    for name in ("model", "optimizer", "ema"):
        with safe_open(str(ck_a / f"{name}.safetensors"), "pt") as fa, safe_open(str(ck_b / f"{name}.safetensors"), "pt") as fb:
            keys = sorted(fa.keys())
            assert keys == sorted(fb.keys())
            if name == "optimizer":
                assert "state.0.exp_avg" in keys and "state.0.exp_avg_sq" in keys and "state.0.step" in keys
                assert json.loads(fa.metadata()["param_groups"])[0]["betas"] == [0.9, 0.95]
            for k in keys:
                assert torch.equal(fa.get_tensor(k), fb.get_tensor(k)), (name, k)
    state = json.loads((ck_a / "state.json").read_text())
    assert state["step"] == 32 and state["stage"] == "s2"

    # the exported weights folder holds the EMA weights and loads as an MMVDM
    from backend.mmvdm.weights import load_mmvdm

    comp = load_mmvdm(a["final"])
    with safe_open(str(ck_a / "ema.safetensors"), "pt") as f, safe_open(str(ck_a / "model.safetensors"), "pt") as m:
        ema_names = set(f.keys())
        assert ema_names and "patch_embed.text_proj.weight" not in ema_names  # frozen: not averaged
        for name, p in comp.transformer.named_parameters():
            assert torch.equal(p.detach(), (f if name in ema_names else m).get_tensor(name)), name


def test_init_from_cogvideox_folder(tmp_path, data_dir):
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    from backend.mmvdm.configs import tiny_config, tiny_vae_config
    from backend.mmvdm.schedule import SCHEDULER_CONFIG

    src = tmp_path / "cogvideox"
    torch.manual_seed(0)
    stock_cfg = {k: v for k, v in tiny_config().items()
                 if k not in ("conditioning_channels", "attention_scale_mode", "base_token_count")}
    stock = CogVideoXTransformer3DModel(**stock_cfg)
    stock.save_pretrained(src / "transformer", safe_serialization=True)
    AutoencoderKLCogVideoX(**tiny_vae_config()).save_pretrained(src / "vae", safe_serialization=True)
    CogVideoXDDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(src / "scheduler")
    cfg = _config(tmp_path / "run", data_dir, model={"init": "cogvideox", "path": str(src)}, ema=None)
    tr = Trainer(cfg)
    assert (tmp_path / "run" / "init" / "mmvdm.json").is_file()
    w = tr.raw_model.transformer_blocks[0].attn1.to_q.weight
    assert torch.equal(w, stock.transformer_blocks[0].attn1.to_q.weight)
    proj = tr.raw_model.patch_embed.proj.weight
    assert proj.shape[1] == 4 + 59 and proj[:, 4:].abs().max() == 0  # new conditioning channels start at zero
    out = tr.run(resume="none", stop_after=2)
    assert out["step"] == 2 and all(np.isfinite(out["losses"]))
    assert tr.raw_model.patch_embed.proj.weight[:, 4:].abs().max() > 0  # and learn


def test_bf16_autocast_accumulation_and_gradient_checkpointing(tmp_path, data_dir):
    cfg = _config(tmp_path / "run", data_dir, micro_batch_size=1, mixed_precision="bf16", ema=None)
    tr = Trainer(cfg)
    assert tr.accumulation(0) == 4 and tr.raw_model.gradient_checkpointing
    out = tr.run(resume="none", stop_after=2)
    rec = [r for r in _log(tmp_path / "run" / "logs" / "train.jsonl") if r["type"] == "train"]
    assert len(rec) == 2 and len(rec[0]["modes"]) == 4 and all(np.isfinite(out["losses"]))
    # gradient checkpointing changes memory, not the maths
    grads = []
    for ckpt in (True, False):
        t = Trainer(_config(tmp_path / f"g{ckpt}", data_dir, gradient_checkpointing=ckpt, ema=None))
        batch = t._loader(0, 1).__next__()
        loss, _ = t._loss(batch, 0, 0)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in t.raw_model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_cli_with_toml_config_and_relative_paths(tmp_path, data_dir, capsys):
    shutil.copytree(data_dir, tmp_path / "data")
    (tmp_path / "cur.json").write_text(json.dumps(CURRICULUM))
    (tmp_path / "train.toml").write_text(
        'run_dir = "runs/x"\ntrain_data = ["data"]\ncurriculum = "cur.json"\nmicro_batch_size = 2\n'
        'device = "cpu"\nlog_every = 1\n[model]\ninit = "scratch"\ntransformer = "tiny"\nvae = "tiny"\n')
    cfg = load_config(tmp_path / "train.toml")
    assert cfg.run_dir == str(tmp_path / "runs" / "x") and cfg.train_data == [str(tmp_path / "data")]
    assert main(["--config", str(tmp_path / "train.toml"), "--max-steps", "2"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert lines[-1]["type"] == "done" and lines[-1]["outputs"]["step"] == 2
    assert (tmp_path / "runs" / "x" / "checkpoints" / "step-00000002" / "model.safetensors").is_file()
    assert main(["--config", str(tmp_path / "nope.toml")]) == 1


def test_config_and_data_errors(tmp_path, data_dir):
    with pytest.raises(MVP4DError, match="unknown key"):
        TrainConfig.from_dict({"run_dir": "x", "train_data": ["y"], "learning_rate": 1})
    with pytest.raises(MVP4DError, match="not a multiple of micro_batch_size"):
        Trainer(_config(tmp_path / "r", data_dir, micro_batch_size=3))
    bad = {"stages": [{**CURRICULUM["stages"][0], "resolutions": ["8x1x32"]}]}
    with pytest.raises(DatasetError, match="8x1"):  # no sequence has 8 views
        Trainer(_config(tmp_path / "r", data_dir, curriculum=bad))
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    (root / "id0001-mvvid" / "images" / "cam03" / "0002.png").unlink()
    with pytest.raises(DatasetError, match="id0001-mvvid: images/cam03: frame 0002 missing"):
        Trainer(_config(tmp_path / "r", root))
    # a frame that only fails when read stops training with its name (never skipped)
    shutil.copy(root / "id0001-mvvid" / "images" / "cam03" / "0003.png", root / "id0001-mvvid" / "images" / "cam03" / "0002.png")
    for seq in root.iterdir():
        for f in (seq / "images").glob("*/*.png") if seq.is_dir() else []:
            if f.name != "0000.png":
                f.write_bytes(b"broken")
    tr = Trainer(_config(tmp_path / "r", root))
    with pytest.raises(DatasetError, match=r"id\d{4}-\w+: images/cam\d\d/\d{4}\.png: cannot be read"):
        tr.run(resume="none", stop_after=3)


def test_latent_pool_resume_time_limit_and_ddp_safety(tmp_path, data_dir):
    cur = {"name": "pool", "stages": [{**CURRICULUM["stages"][0], "iterations": 6},
                                      {**CURRICULUM["stages"][1], "iterations": 4}]}
    a = Trainer(_config(tmp_path / "a", data_dir, curriculum=cur, pool_batches=2, ema=None))
    ra = a.run(resume="none")
    assert [a.pool_source(s) for s in range(10)] == [0, 1, 0, 1, 0, 1, 6, 7, 6, 7]
    assert len(a._pool) == 4 * 2  # 2 steps per stage x 2 stages x 2 micro-batches, encoded once
    b1 = Trainer(_config(tmp_path / "b", data_dir, curriculum=cur, pool_batches=2, ema=None)).run(resume="none",
                                                                                                   stop_after=5)
    b2 = Trainer(_config(tmp_path / "b", data_dir, curriculum=cur, pool_batches=2, ema=None)).run(resume="auto")
    assert np.abs(np.array(ra["losses"]) - np.array(b1["losses"] + b2["losses"])).max() <= 1e-5
    # a time limit stops at a step boundary with a checkpoint
    c = Trainer(_config(tmp_path / "c", data_dir, curriculum=cur, ema=None)).run(resume="none", time_limit_s=0.0)
    assert c["status"] == "stopped" and c["step"] == 0
    # every trainable parameter receives a gradient (DDP would hang on unused ones); text_proj is frozen
    t = Trainer(_config(tmp_path / "d", data_dir, curriculum=cur, ema=None))
    loss, _ = t._loss(next(t._loader(0, 1)), 0, 0)
    loss.backward()
    missing = [n for n, p in t.raw_model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert not t.raw_model.patch_embed.text_proj.weight.requires_grad
