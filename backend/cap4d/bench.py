"""``python -m backend bench cap4d``: one CFG-batched 8-view MMDM forward at 512², random full-size weights.

``bench_cap4d(...)`` returns a JSON-serialisable dict (importable by GPU check scripts):

* ``seconds_per_forward``: mean of ``steps`` timed forwards after one warm-up, CUDA-synchronised;
* ``flops_per_forward``: torch's FLOP counter on the meta device (:mod:`backend.cap4d.cost`), 14.03 TFLOP
  for 2 × 8 images at 512²; ``achieved_tflops`` = flops / seconds;
* ``matmul_tflops``: the same device's dense matmul rate in the same dtype, timed in the same run;
  ``fraction_of_matmul`` = achieved / matmul;
* ``peak_memory_bytes``: ``torch.cuda.max_memory_allocated`` (weights included) on CUDA, peak RSS growth
  on CPU;
* ``attention``: ``auto`` (diffusers' default, native SDPA) or a dispatcher backend name/alias
  (``flash``, ``cudnn``, ``sage``, ... as in ``bench mmvdm``), set with ``set_attention_backend``.

Full size on a CPU is possible but slow (minutes per forward); ``--size tiny`` (32 base channels) is the
smoke test.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ..benchkit import (ATTENTION_ALIASES, BENCH_DTYPES, add_forward_args, matmul_tflops, print_result,
                        reset_peak_rss, status_bytes, sync)
from ..errors import MVP4DError
from .config import sd21_upstream_config, tiny_upstream_config, unet_config_from_upstream
from .cost import forward_flops
from .unet import MMDMUNet

__all__ = ["bench_cap4d", "main"]


def bench_cap4d(size: str = "full", views: int = 8, res: int = 512, refs: int = 1, dtype: str = "bf16",
                attention: str = "auto", steps: int = 3, device: str | None = None) -> dict:
    """Time ``steps`` CFG forwards (batch 2 × ``views``) of a randomly initialised MMDM UNet."""
    if size not in ("full", "tiny"):
        raise MVP4DError("BAD_INPUT", f"unknown size {size!r}", "Use --size full or --size tiny.")
    if dtype not in BENCH_DTYPES:
        raise MVP4DError("BAD_INPUT", f"unknown dtype {dtype!r}", "Use bf16, fp16 or fp32.")
    if res % 64 or views < 1 or not 0 <= refs < views or steps < 1:
        raise MVP4DError("BAD_INPUT", "res must be a multiple of 64, 0 <= refs < views, steps >= 1")
    dt = BENCH_DTYPES[dtype]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    upstream = sd21_upstream_config() if size == "full" else tiny_upstream_config()
    torch.manual_seed(0)
    with torch.device(dev):
        unet = MMDMUNet.from_config(unet_config_from_upstream(upstream))
    unet = torch.nn.Module.to(unet, dt).eval()
    backend = None if attention == "auto" else ATTENTION_ALIASES.get(attention, attention)
    lat = res // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, views, 4, lat, lat, generator=g).to(dev)
    z = torch.randn(2, views, 4, lat, lat, generator=g).to(dev)
    z[0] = 0  # the unconditional half: zero reference latents and maps
    maps = torch.randn(2, views, lat, lat, upstream["condition_channels"], generator=g).to(dev)
    maps[0] = 0
    mask = torch.zeros(2, views, 1, 1, 1, dtype=torch.uint8, device=dev)
    mask[:, :refs] = 1
    ts = torch.full((2, views), 501, dtype=torch.long, device=dev)
    try:
        if backend:
            unet.set_attention_backend(backend)
        with torch.inference_mode():
            unet(x, ts, z, mask, maps)
            sync(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            else:
                reset_peak_rss()
                base = status_bytes("VmRSS") or 0
            t0 = time.perf_counter()
            for _ in range(steps):
                out = unet(x, ts, z, mask, maps)
            sync(dev)
            seconds = (time.perf_counter() - t0) / steps
            peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else max(
                0, (status_bytes("VmHWM") or base) - base)
    except torch.OutOfMemoryError as exc:
        raise MVP4DError("OUT_OF_MEMORY", f"the {size} MMDM at 2 × {views} × {res}² does not fit on {dev}") from exc
    except (ValueError, RuntimeError, ImportError) as exc:
        raise MVP4DError("BAD_INPUT", f"attention backend {attention!r} failed on {dev}: {exc}",
                         "Use --attention auto.") from exc
    flops = forward_flops(views, res, cfg=True, model_channels=upstream["model_channels"])
    rate = matmul_tflops(dev, dt)
    achieved = flops / seconds / 1e12
    return {"size": size, "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda"
            else "cpu", "dtype": dtype, "attention": attention, "views": views, "references": refs, "res": res,
            "batch": 2, "parameters": sum(p.numel() for p in unet.parameters()), "steps": steps,
            "seconds_per_forward": seconds, "flops_per_forward": flops, "achieved_tflops": achieved,
            "matmul_tflops": rate, "fraction_of_matmul": achieved / rate, "peak_memory_bytes": int(peak),
            "output_shape": list(out.shape), "finite": bool(torch.isfinite(out).all()),
            "cpu_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend bench cap4d", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--res", type=int, default=512)
    p.add_argument("--refs", type=int, default=1)
    add_forward_args(p)
    a = p.parse_args(argv)
    return print_result(lambda: bench_cap4d(a.size, a.views, a.res, a.refs, a.dtype, a.attention, a.steps, a.device))

if __name__ == "__main__":
    sys.exit(main())
