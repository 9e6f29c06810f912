"""How many CPU threads torch uses while a CPU-bound step runs: one definition for every stage.

The backend's CPU work is many small tensor ops (a 128-px Gaussian render, a landmark fit): extra
intra-op threads only add synchronisation, and on a busy 2-core machine spinning OpenMP workers made
the same work 5-10x slower (docs/benchmarks.md). Fit, tracking and the export's preview renders
therefore run with the fit settings' ``threads`` (1 for the CPU presets; None leaves torch's default,
as the GPU presets do).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads, restored afterwards (process-wide while it runs); None: as is."""
    old = torch.get_num_threads()
    if not n or old == n:
        yield
        return
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)
