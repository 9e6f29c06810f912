"""The training config (``TrainConfig``, JSON/TOML files) and model construction (``build_model``: from
CogVideoX-2B, an MMVDM weights folder, or from scratch).

Config (JSON or TOML; relative paths are relative to the config file)::

    run_dir = "runs/mmvdm"                      # checkpoints/, logs/train.jsonl, final/ (MMVDM weights folder)
    train_data = ["data/nersemble", "data/vfhq"]   # dataset folders (backend/training/layout.py format)
    data_weights = [1.0, 1.0]                   # relative sampling weights (optional)
    curriculum = "paper"                        # bundled name, a JSON file, or an inline table
    micro_batch_size = 1                        # per process; accumulation = batch_size / (micro × processes)
    seed = 0
    mixed_precision = "auto"                    # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | no
    gradient_checkpointing = true
    max_grad_norm = 1.0
    checkpoint_every = 1000                     # optimizer steps; also at the end of every stage and the run
    keep_checkpoints = 3
    log_every = 10
    tensorboard = false                         # also TensorBoard scalars in logs/tensorboard (needs `tensorboard`)
    attention_backend = "flash"                 # optional: diffusers attention backend (set_attention_backend)
    num_workers = 4                             # data-loader processes per rank (decoding, cropping, maps)
    pool_batches = 0                            # > 0: latent caching for small runs — each stage reuses the
                                                #  micro-batches of its first P steps (sampled, rendered and
                                                #  VAE-encoded once, kept in memory) cyclically; t and noise are
                                                #  still fresh every step. 0/absent: new data every step
    [model]
    init = "cogvideox"                          # "cogvideox" (path = CogVideoX-2B diffusers folder, converted by
    path = "/models/CogVideoX-2b"               #  backend.mmvdm.weights.build_mmvdm_from_cogvideox into
                                                #  run_dir/init), "mmvdm" (path = an MMVDM weights folder), or
                                                #  "scratch" (transformer = "tiny" | "small" | "2b" | {config},
                                                #  vae = "tiny" | a diffusers VAE folder, init_seed)
    [optimizer]                                 # AdamW
    betas = [0.9, 0.95]
    weight_decay = 1e-4
    eps = 1e-8
    [ema]                                       # optional
    decay = 0.9999
    [validation]                                # optional: fixed batches, fixed noise and timesteps
    every = 500
    batches = 4
    data = ["data/heldout"]                     # default: the training data
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..errors import MVP4DError

__all__ = ["TrainConfig", "load_config", "build_model", "NAMED_TRANSFORMERS", "named_transformer", "step_seed"]

#: transformer configs for ``model.init = "scratch"``
NAMED_TRANSFORMERS = ("tiny", "small", "2b")


def named_transformer(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from ..mmvdm.configs import mmvdm_2b_config, tiny_config

    if name == "tiny":
        cfg = tiny_config()
    elif name == "small":  # the CPU experiment's model: 4 layers, 4 heads × 24 (D = 96), 16 latent channels
        cfg = tiny_config(num_attention_heads=4, attention_head_dim=24, num_layers=4, in_channels=16, out_channels=16,
                          time_embed_dim=64)
    elif name == "2b":
        cfg = mmvdm_2b_config()
    else:
        raise MVP4DError("BAD_INPUT", f"model.transformer {name!r} is not one of {', '.join(NAMED_TRANSFORMERS)}")
    cfg.update(overrides or {})
    return cfg


def step_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    h = hashlib.sha256(("mvp4d-train/" + "/".join(str(int(p)) for p in parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    run_dir: str
    train_data: list[str]
    data_weights: list[float] | None = None
    curriculum: Any = "paper"
    model: dict[str, Any] = field(default_factory=lambda: {"init": "scratch", "transformer": "tiny", "vae": "tiny"})
    micro_batch_size: int = 1
    seed: int = 0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = True
    optimizer: dict[str, Any] = field(default_factory=lambda: {"betas": [0.9, 0.95], "weight_decay": 1e-4, "eps": 1e-8})
    max_grad_norm: float = 1.0
    ema: dict[str, Any] | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int | None = 3
    log_every: int = 10
    validation: dict[str, Any] | None = None
    max_steps: int | None = None
    num_workers: int = 0
    frame_stride: int = 1
    max_reference_angle: float = 60.0
    attention_backend: str | None = None
    vae_slicing: bool = True
    export_final: bool = True
    device: str | None = None  # None: CUDA when available (accelerate's choice), "cpu" forces the CPU
    pool_batches: int | None = None  # latent caching: reuse a fixed pool of this many steps' batches per stage
    tensorboard: bool = False  # also write TensorBoard scalars to run_dir/logs/tensorboard (needs `tensorboard`)
    threads: int | None = None  # torch CPU threads (None: leave as is)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: Path | None = None) -> "TrainConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise MVP4DError("BAD_INPUT", f"training config: unknown key(s) {unknown}",
                             f"Known keys: {', '.join(sorted(known))}.")
        for k in ("run_dir", "train_data"):
            if k not in d:
                raise MVP4DError("BAD_INPUT", f"training config: {k!r} is required")
        d = dict(d)
        base = base or Path.cwd()
        rel = lambda p: str(p if Path(p).expanduser().is_absolute() else (base / p).resolve())  # noqa: E731
        d["run_dir"] = rel(d["run_dir"])
        td = d["train_data"]
        d["train_data"] = [rel(p) for p in ([td] if isinstance(td, str) else td)]
        if isinstance(d.get("curriculum"), str) and ("/" in d["curriculum"] or d["curriculum"].endswith(".json")):
            d["curriculum"] = rel(d["curriculum"])
        model = dict(d.get("model") or {})
        for k in ("path", "vae"):
            v = model.get(k)
            if isinstance(v, str) and v not in ("tiny",) and ("/" in v or Path(base / v).exists()):
                model[k] = rel(v)
        if model:
            d["model"] = model
        if d.get("validation") and d["validation"].get("data"):
            v = dict(d["validation"])
            v["data"] = [rel(p) for p in ([v["data"]] if isinstance(v["data"], str) else v["data"])]
            d["validation"] = v
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.micro_batch_size < 1:
            raise MVP4DError("BAD_INPUT", "training config: micro_batch_size must be >= 1")
        if self.mixed_precision not in ("auto", "bf16", "fp16", "no"):
            raise MVP4DError("BAD_INPUT", f"training config: mixed_precision {self.mixed_precision!r} is not "
                             "auto, bf16, fp16 or no")
        if self.model.get("init", "scratch") not in ("scratch", "cogvideox", "mmvdm"):
            raise MVP4DError("BAD_INPUT", f"training config: model.init {self.model.get('init')!r} is not "
                             "scratch, cogvideox or mmvdm")
        if self.model.get("init") in ("cogvideox", "mmvdm") and not self.model.get("path"):
            raise MVP4DError("BAD_INPUT", f"training config: model.init = {self.model['init']!r} needs model.path")
        if self.data_weights is not None and len(self.data_weights) != len(self.train_data):
            raise MVP4DError("BAD_INPUT", "training config: data_weights needs one weight per train_data folder")

    def fingerprint(self) -> str:
        keep = {k: v for k, v in asdict(self).items() if k in ("train_data", "data_weights", "curriculum", "model",
                                                                  "micro_batch_size", "seed", "optimizer", "ema",
                                                                  "frame_stride", "max_reference_angle")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise MVP4DError("BAD_INPUT", f"training config {path} does not exist")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            d = tomllib.loads(path.read_text(encoding="utf-8"))
        else:
            d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MVP4DError("BAD_INPUT", f"training config {path} cannot be parsed ({exc})") from exc
    d.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(d, base=path.parent.resolve())


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------


def build_model(cfg: TrainConfig, log: Callable[[str], None] = lambda m: None):
    """(transformer float32, VAE, scheduler config) per ``cfg.model`` (see the module docstring)."""
    from diffusers import AutoencoderKLCogVideoX

    from ..mmvdm.attention import DEFAULT_ATTENTION_SCALE_MODE
    from ..mmvdm.configs import tiny_vae_config
    from ..mmvdm.schedule import SCHEDULER_CONFIG
    from ..mmvdm.transformer import MMVDMTransformer
    from ..mmvdm.weights import build_mmvdm_from_cogvideox, check_weights, load_mmvdm

    m = cfg.model
    init = m.get("init", "scratch")
    if init == "cogvideox":
        dst = Path(cfg.run_dir) / "init"
        if not (dst / "mmvdm.json").is_file():
            log(f"converting CogVideoX weights from {m['path']} into {dst}")
            build_mmvdm_from_cogvideox(m["path"], dst, conditioning_channels=int(m.get("conditioning_channels", 59)),
                                       dtype=torch.float32,
                                       attention_scale_mode=m.get("attention_scale_mode", DEFAULT_ATTENTION_SCALE_MODE))
        comp = load_mmvdm(dst, dtype=torch.float32)
        return comp.transformer, comp.vae, comp.scheduler_config
    if init == "mmvdm":
        comp = load_mmvdm(m["path"], dtype=torch.float32)
        return comp.transformer, comp.vae, comp.scheduler_config
    t = m.get("transformer", "tiny")
    tcfg = named_transformer(t, m.get("overrides")) if isinstance(t, str) else dict(t)
    torch.manual_seed(int(m.get("init_seed", cfg.seed)))
    transformer = MMVDMTransformer.from_config(tcfg)
    v = m.get("vae", "tiny")
    if v == "tiny":
        vae = AutoencoderKLCogVideoX(**tiny_vae_config(tcfg["in_channels"]))
    else:
        p = Path(v)
        if (p / "mmvdm.json").is_file() or (p / "vae").is_dir():
            check_weights(p) if (p / "mmvdm.json").is_file() else None
            p = p / "vae"
        if not (p / "config.json").is_file():
            raise MVP4DError("WEIGHTS_MISSING", f"model.vae {v} is not a diffusers VAE folder (config.json + safetensors)")
        vae = AutoencoderKLCogVideoX.from_pretrained(str(p), use_safetensors=True, local_files_only=True,
                                                     torch_dtype=torch.float32)
    if vae.config.latent_channels != transformer.config.in_channels:
        raise MVP4DError("WEIGHTS_MISMATCH", f"VAE latent_channels {vae.config.latent_channels} != transformer "
                         f"in_channels {transformer.config.in_channels}")
    return transformer, vae, dict(m.get("scheduler") or SCHEDULER_CONFIG)
