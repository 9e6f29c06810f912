"""Benchmark one MMVDM forward on randomly initialised weights: time, FLOP/s, peak memory.

``run_bench(...)`` returns a JSON-serialisable dict; ``main(argv)`` parses ``--size --views --frames --res
--dtype --attention --steps [--device]`` and prints it (``python -m backend.mmvdm.bench --size tiny``).

* ``seconds_per_forward``: mean over ``steps`` timed forwards after one untimed warm-up, CUDA-synchronised.
* ``flops_per_forward``: analytic, from the config and token count (``configs.forward_flops``: QKV/out
  projections 8·N·D², attention matmuls 4·N²·D, MLP 16·N·D² per layer, patch embed, AdaLN and output head;
  2·m·n·k per matmul; elementwise ops not counted). ``achieved_tflops`` = flops / seconds.
* ``matmul_tflops``: the same device's measured dense bf16 matmul rate (a square ``torch.matmul``, timed in
  the same run); ``fraction_of_matmul`` = achieved / matmul.
* ``peak_memory_bytes``: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the growth of the process's
  peak RSS (VmHWM, reset through /proc/self/clear_refs where the kernel allows it) over the RSS before.
* ``attention``: "auto" leaves diffusers' default (native SDPA, which picks flash/cuDNN/efficient itself);
  "flash", "flash3", "cudnn", "efficient", "math", "native", "sage", "flex", "xformers" or any diffusers
  ``AttentionBackendName`` value is selected with diffusers' ``attention_backend`` context manager.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

from ..benchkit import (ATTENTION_ALIASES, BENCH_DTYPES, add_forward_args, matmul_tflops, print_result,
                        reset_peak_rss, status_bytes, sync)
from ..errors import MVP4DError
from .configs import forward_flops, latent_frames, mmvdm_2b_config, tiny_config
from .transformer import MMVDMTransformer

__all__ = ["run_bench", "main", "ATTENTION_ALIASES", "build_random", "time_forward", "matmul_tflops"]


def build_random(config: dict, views: int, latent_t: int, h: int, w: int, dtype: torch.dtype,
                 device: torch.device) -> tuple[MMVDMTransformer, dict[str, torch.Tensor]]:
    """A randomly initialised MMVDM (seed 0, built directly on ``device``) in ``dtype``, eval mode, and one
    random input set: ``latents`` (1, V, T, C, h, w), ``cond``, ``ref``, ``ref_cond`` and ``timestep``."""
    torch.manual_seed(0)
    with torch.device(device):
        model = MMVDMTransformer.from_config(config)
    model = torch.nn.Module.to(model, dtype).eval()  # (ModelMixin.to warns about fp32 modules it has none of)
    gen = torch.Generator(device="cpu").manual_seed(0)
    cc = config["conditioning_channels"]
    inputs = {
        "latents": torch.randn(1, views, latent_t, config["in_channels"], h, w, generator=gen).to(device, dtype),
        "cond": torch.randn(1, views, latent_t, cc, h, w, generator=gen).to(device, dtype),
        "ref": torch.randn(1, config["in_channels"], h, w, generator=gen).to(device, dtype),
        "ref_cond": torch.randn(1, cc, h, w, generator=gen).to(device, dtype),
        "timestep": torch.tensor([500], device=device),
    }
    return model, inputs


def time_forward(model: MMVDMTransformer, inputs: dict[str, torch.Tensor], backend: str | None = None,
                 steps: int = 1) -> dict:
    """Mean seconds of ``steps`` forwards after one untimed warm-up, with diffusers attention ``backend``
    (None: its default), and the peak memory of the timed forwards (module docstring); raises what the
    forward raises (an unavailable backend, out of memory)."""
    from diffusers.models.attention_dispatch import attention_backend

    device = inputs["latents"].device

    def forward() -> torch.Tensor:
        return model(inputs["latents"], inputs["timestep"], reference=inputs["ref"], conditioning=inputs["cond"],
                     reference_conditioning=inputs["ref_cond"]).sample

    ctx = attention_backend(backend) if backend else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        forward()  # warm-up (kernel selection, allocator)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        else:
            reset_peak_rss()
            base = status_bytes("VmRSS") or 0
        t0 = time.perf_counter()
        for _ in range(steps):
            out = forward()
        sync(device)
        seconds = (time.perf_counter() - t0) / steps
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
        else:
            peak = max(0, (status_bytes("VmHWM") or base) - base)
    return {"seconds": seconds, "peak_memory_bytes": int(peak), "output": out}


def run_bench(size: str = "tiny", views: int = 2, frames: int = 9, res: int = 64, dtype: str | torch.dtype = "bf16",
              attention: str = "auto", steps: int = 3, device: str | torch.device | None = None) -> dict:
    """Time ``steps`` forwards of a randomly initialised MMVDM (see the module docstring for every field).

    ``frames`` are pixel frames per view (1 + 4k), ``res`` the square pixel resolution (multiple of 16).
    """
    if size not in ("tiny", "2b"):
        raise MVP4DError("BAD_INPUT", f"unknown model size {size!r}", "Use --size tiny or --size 2b.")
    if isinstance(dtype, str):
        if dtype not in BENCH_DTYPES:
            raise MVP4DError("BAD_INPUT", f"unknown dtype {dtype!r}", "Use bf16, fp16 or fp32.")
        dtype = BENCH_DTYPES[dtype]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if views < 1 or steps < 1 or res % 16:
        raise MVP4DError("BAD_INPUT", "views and steps must be >= 1 and res a multiple of 16")
    t = latent_frames(frames)
    h = w = res // 8
    config = mmvdm_2b_config() if size == "2b" else tiny_config()
    backend = None if attention == "auto" else ATTENTION_ALIASES.get(attention, attention)

    model, inputs = build_random(config, views, t, h, w, dtype, device)
    try:
        timing = time_forward(model, inputs, backend, steps)
    except (ValueError, RuntimeError, ImportError) as exc:
        if isinstance(exc, torch.OutOfMemoryError):
            raise MVP4DError("OUT_OF_MEMORY", f"the {size} MMVDM at {views} views × {frames} frames × {res}² does "
                             f"not fit on {device}") from exc
        raise MVP4DError("BAD_INPUT", f"attention backend {attention!r} failed on {device}: {exc}",
                         "Use --attention auto or native.") from exc
    seconds, peak, out = timing["seconds"], timing["peak_memory_bytes"], timing["output"]
    flops = forward_flops(config, views, t, h, w, reference=True)
    rate = matmul_tflops(device)
    achieved = flops["total"] / seconds / 1e12
    return {
        "size": size, "device": str(device), "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda" else "cpu", "dtype": str(dtype).removeprefix("torch."), "attention": attention,
        "attention_backend": backend or "default", "views": views, "frames": frames, "latent_frames": t,
        "res": res, "tokens": flops["tokens"], "attention_scale": model.attention_scale(flops["tokens"]),
        "parameters": sum(p.numel() for p in model.parameters()), "steps": steps,
        "seconds_per_forward": seconds, "flops_per_forward": flops["total"],
        "flops_breakdown": {k: v for k, v in flops.items() if k not in ("total", "tokens")},
        "achieved_tflops": achieved, "matmul_tflops": rate, "fraction_of_matmul": achieved / rate,
        "peak_memory_bytes": int(peak), "output_shape": list(out.shape), "cpu_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend bench mmvdm", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("tiny", "2b"), default="tiny")
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--frames", type=int, default=9, help="pixel frames per view, 1 + 4k")
    p.add_argument("--res", type=int, default=64, help="square pixel resolution, multiple of 16")
    add_forward_args(p)
    args = p.parse_args(argv)
    return print_result(lambda: run_bench(args.size, args.views, args.frames, args.res, args.dtype, args.attention,
                                          args.steps, args.device))

if __name__ == "__main__":
    sys.exit(main())
