"""The training data stream: micro-batches indexed by (step, micro-step), each a pure function of
(seed, step, micro-step, rank) — the basis of exact resume — and the latent pool (``pool_batches``)."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch

from .curriculum import Curriculum
from .data import MultiDataset
from .objective import collate, prepare_sample

__all__ = ["StepBatches", "PoolIterator"]


class StepBatches(torch.utils.data.IterableDataset):
    """Micro-batches for steps ``start … end − 1`` in order, each a pure function of (seed, step, micro, rank).

    With several data-loader workers, micro-batch k (counted from ``start``) is made by worker
    k mod workers; the DataLoader returns them round-robin, i.e. in order.
    """

    def __init__(self, data: MultiDataset, curriculum: Curriculum, seed: int, micro_batch: int, rank: int,
                 start: int, end: int, accumulation: Callable[[int], int], stride: int = 1):
        super().__init__()
        self.data, self.cur, self.seed, self.micro, self.rank = data, curriculum, seed, micro_batch, rank
        self.start, self.end, self.accumulation, self.stride = start, end, accumulation, stride

    def make(self, step: int, micro: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, step, micro, self.rank, 1])
        draw = self.cur.draw(rng, step, self.micro)
        r = draw.resolution
        samples = []
        for sm in draw.samples:
            item = self.data.sample(rng, r.views, r.frames, r.size, stride=self.stride)
            samples.append(prepare_sample(self.data.flame, item, sm))
        batch = collate(samples)
        batch.update(step=step, micro=micro, stage=draw.stage_index, resolution=str(r))
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        if info is not None:
            torch.set_num_threads(1)
        k = 0
        for step in range(self.start, self.end):
            for micro in range(self.accumulation(step)):
                if k % nw == wid:
                    yield self.make(step, micro)
                k += 1


class PooledSource(Protocol):
    """What :class:`PoolIterator` needs of the trainer (:class:`backend.training.trainer.Trainer`)."""

    def accumulation(self, step: int) -> int: ...

    def _pooled(self, step: int, micro: int) -> dict[str, Any]: ...


class PoolIterator:
    """Micro-batches of steps ``start … end − 1`` from the trainer's latent pool (``pool_batches``)."""

    def __init__(self, trainer: PooledSource, start: int, end: int):
        self.keys = iter([(s, m) for s in range(start, end) for m in range(trainer.accumulation(s))])
        self.trainer = trainer

    def __next__(self) -> dict[str, Any]:
        return self.trainer._pooled(*next(self.keys))
