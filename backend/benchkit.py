"""Shared tools of the forward benchmarks (``bench mmvdm``, ``bench cap4d``, the GPU check): the attention
backend names, the dtype names, device synchronisation, the process's memory peak on CPU, the device's
dense matmul rate, the common command-line options and the JSON result printer.

One definition each, so that every benchmark times, counts memory and compares with the matmul rate the
same way (``matmul_tflops`` is the denominator of every ``fraction_of_matmul`` in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import MVP4DError
from .events import report_error

__all__ = ["ATTENTION_ALIASES", "BENCH_DTYPES", "sync", "status_bytes", "reset_peak_rss", "matmul_tflops",
           "add_forward_args", "print_result"]

ATTENTION_ALIASES = {
    "native": "native", "flash": "flash", "flash3": "_flash_3", "fa3": "_flash_3", "cudnn": "_native_cudnn",
    "efficient": "_native_efficient", "math": "_native_math", "torch-flash": "_native_flash", "sage": "sage",
    "flex": "flex", "xformers": "xformers",
}
BENCH_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": torch.float32, "float32": torch.float32}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def matmul_tflops(device: torch.device, dtype: torch.dtype = torch.bfloat16, n: int | None = None,
                  repeats: int | None = None) -> float:
    """Measured dense matmul rate (TFLOP/s) of an n×n×n ``torch.matmul`` in ``dtype`` on ``device``."""
    n = n or (8192 if device.type == "cuda" else 512)
    repeats = repeats or (20 if device.type == "cuda" else 3)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e12


def add_forward_args(p: argparse.ArgumentParser) -> None:
    """The options every forward benchmark takes: ``--dtype --attention --steps --device``."""
    p.add_argument("--dtype", choices=sorted(BENCH_DTYPES), default="bf16")
    p.add_argument("--attention", default="auto", help="auto | " + " | ".join(ATTENTION_ALIASES))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default=None)


def print_result(run: Callable[[], dict[str, Any]]) -> int:
    """Run a benchmark and print its JSON; a typed error becomes one error event (anything else reaches
    ``backend.cli.main``'s guard)."""
    try:
        result = run()
    except MVP4DError as exc:
        return report_error(exc)
    print(json.dumps(result, indent=2))
    return 0
