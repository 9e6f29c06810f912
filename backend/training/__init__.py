"""Training the MMVDM (paper §3.3, §5 "Training & Inference", S2.2, S3.3).

* :mod:`.layout` — the on-disk training format (one folder per sequence: views × frames of images or
  per-view videos, per-frame FLAME parameters, per-view cameras, optional mattes) and its validation;
  :mod:`.frames` — reading / writing frames; :mod:`.data` — the reader that samples V views × F frames
  + a reference image per item (S2.2).
* :mod:`.synthetic` — a synthetic dataset in that format from the toy head (random identities,
  procedural textures, expression tracks, camera rings; monocular video, multi-view images and
  multi-view video sequences).
* :mod:`.curriculum` — training stages as data (the paper's Table 3 is ``configs/paper.json``),
  resolution / generation-mode / conditioning-dropout sampling.
* :mod:`.objective` — items → model inputs (VAE latents, conditioning maps, clean-slot masks) and the
  v-prediction loss.
* :mod:`.config` — the training config and model construction; :mod:`.stream` — the step-indexed data
  stream; :mod:`.checkpoint` — safetensors checkpoints and EMA; :mod:`.trainer` — the trainer on
  ``accelerate`` (``python -m backend train --config FILE``); :mod:`.autoencoder` — the VAE stand-in
  for CPU experiments.
* :mod:`.experiment` — the small-scale CFG ablation (``python -m backend experiment cfg-ablation``).

Names are imported lazily so ``import backend.training`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainingDataset": "data", "MultiDataset": "data", "TrainingItem": "data", "SequenceInfo": "data",
    "DatasetError": "data", "validate_dataset": "data", "FORMAT": "data",
    "generate_synthetic_dataset": "synthetic", "SyntheticConfig": "synthetic",
    "Curriculum": "curriculum", "Stage": "curriculum", "Resolution": "curriculum", "load_curriculum": "curriculum",
    "TrainConfig": "config", "load_config": "config", "Trainer": "trainer", "train": "trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
