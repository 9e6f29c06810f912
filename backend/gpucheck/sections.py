"""The measurements of the GPU check, one function per section, each run in a child process.

``python -m backend.gpucheck.sections NAME --result FILE [--options JSON]``: runs section NAME and keeps
FILE (JSON) up to date after every measurement (``Recorder.put``), so a section killed at its time
budget still leaves what it measured; an exception is recorded as ``error`` (+ ``traceback``) and the
process exits 1. The runner (``backend.gpucheck.runner``) merges FILE into the check's JSON.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from ..benchkit import sync
from ..fsutil import write_text_atomic

#: the MMVDM setting of the issue: 8 views × 49 pixel frames × 512², the reference image included
MMVDM_SETTING = {"views": 8, "frames": 49, "res": 512}
#: attention backends tried, in order: (label, diffusers AttentionBackendName or None for the default)
ATTENTION_BACKENDS = [
    ("native (SDPA default)", None), ("torch flash (_native_flash)", "_native_flash"),
    ("cuDNN (_native_cudnn)", "_native_cudnn"), ("efficient (_native_efficient)", "_native_efficient"),
    ("flash-attn 2 (flash)", "flash"), ("flash-attn 3 (_flash_3)", "_flash_3"), ("sage", "sage"),
]
GB = 1e9


class Recorder:
    """The section's result dict, rewritten atomically to ``path`` on every ``put``."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        write_text_atomic(self.path, json.dumps(self.data, indent=2, default=str))


def _sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (readable JSON for GPU and tiny CPU numbers alike)."""
    return float(f"{x:.{digits}g}")


def _error_text(exc: BaseException) -> str:
    """One line: the exception type and the first line of its message (kernels' messages run long)."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}"[:400]


def _device(opts: dict) -> torch.device:
    """``opts["device"]`` (default cuda; the tests run the sections on the CPU at tiny sizes)."""
    dev = torch.device(opts.get("device", "cuda"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    return dev


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def _peak(dev: torch.device) -> tuple[int | None, int | None]:
    """(peak allocated, peak reserved) bytes since ``_reset_peak`` on CUDA; (None, None) elsewhere."""
    if dev.type != "cuda":
        return None, None
    return int(torch.cuda.max_memory_allocated(dev)), int(torch.cuda.max_memory_reserved(dev))


def _empty_cache(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _command_line(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# -- sections --------------------------------------------------------------------------------------

def section_device(rec: Recorder, opts: dict) -> None:
    """GPU and software versions, then the dense bf16 matmul rate (8192³, best of 3 runs of 10)."""
    from ..benchkit import matmul_tflops

    dev = _device(opts)
    nvcc = _command_line(["nvcc", "--version"])
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        rec.put("device_name", torch.cuda.get_device_name(dev))
        rec.put("capability", f"{props.major}.{props.minor}")
        rec.put("multiprocessors", props.multi_processor_count)
        rec.put("memory_bytes", int(props.total_memory))
    else:
        rec.put("device_name", f"CPU ({os.cpu_count()} threads; --cpu-smoke)")
    rec.put("torch", torch.__version__)
    rec.put("cuda", torch.version.cuda)
    rec.put("cudnn", torch.backends.cudnn.version())
    rec.put("driver", _command_line(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]))
    rec.put("nvcc", nvcc.splitlines()[-1] if nvcc else None)
    rec.put("python", sys.version.split()[0])
    rec.put("packages", {d: _version(d) for d in ("diffusers", "gsplat", "numpy", "triton", "flash-attn")})
    rec.put("cpu_count", os.cpu_count())
    if dev.type == "cuda":
        runs = [matmul_tflops(dev, torch.bfloat16, n=8192, repeats=10) for _ in range(3)]
    else:  # --cpu-smoke: CPUs without bf16 units emulate it slowly; the number only proves the path
        runs = [matmul_tflops(dev, torch.float32, n=256, repeats=3) for _ in range(3)]
    rec.put("matmul_bf16_tflops_runs", [_sig(r) for r in runs])
    rec.put("matmul_bf16_tflops", _sig(max(runs)))


def _matmul_rate(opts: dict, dev: torch.device) -> float:
    """The device section's rate when it ran, else measured here (8192³ on CUDA, 512³ elsewhere)."""
    if opts.get("matmul_tflops"):
        return float(opts["matmul_tflops"])
    from ..benchkit import matmul_tflops

    if dev.type != "cuda":
        return matmul_tflops(dev, torch.float32, n=256, repeats=3)
    return max(matmul_tflops(dev, torch.bfloat16, n=8192, repeats=10) for _ in range(2))


def _setting(opts: dict) -> dict:
    return {**MMVDM_SETTING, **opts.get("mmvdm_setting", {})}


def _build_mmvdm(opts: dict, dev: torch.device):
    from ..mmvdm.bench import build_random
    from ..mmvdm.configs import latent_frames, mmvdm_2b_config, tiny_config

    s = _setting(opts)
    config = tiny_config() if opts.get("mmvdm_size") == "tiny" else mmvdm_2b_config()
    t, h = latent_frames(s["frames"]), s["res"] // 8
    model, inputs = build_random(config, s["views"], t, h, h, torch.bfloat16, dev)
    return config, s, t, h, model, inputs


def section_mmvdm(rec: Recorder, opts: dict) -> None:
    """The 2B MMVDM forward (random weights, bf16) with each attention backend: one warm-up + timed forwards."""
    from ..mmvdm.bench import time_forward
    from ..mmvdm.configs import count_parameters, forward_flops

    dev = _device(opts)
    rate = _matmul_rate(opts, dev)
    t0 = time.perf_counter()
    config, s, t, h, model, inputs = _build_mmvdm(opts, dev)
    flops = forward_flops(config, s["views"], t, h, h, reference=True)
    rec.put("setting", {**s, "latent_frames": t, "tokens": flops["tokens"], "dtype": "bfloat16",
                        "size": opts.get("mmvdm_size", "2b"), "parameters": count_parameters(config)})
    rec.put("flops_per_forward", flops["total"])
    rec.put("matmul_bf16_tflops", round(rate, 1))
    rec.put("model_build_seconds", round(time.perf_counter() - t0, 2))
    rows: list[dict] = []
    steps = int(opts.get("mmvdm_steps", 1))
    for label, backend in ATTENTION_BACKENDS:
        row: dict[str, Any] = {"backend": label, "diffusers_name": backend or "native"}
        try:
            r = time_forward(model, inputs, backend, steps)
            achieved = flops["total"] / r["seconds"] / 1e12
            row.update(status="ok", seconds=_sig(r["seconds"]), achieved_tflops=_sig(achieved),
                       fraction_of_matmul=_sig(achieved / rate), peak_memory_bytes=r["peak_memory_bytes"])
            del r
        except Exception as exc:  # an unavailable backend or OOM: record it, try the next
            missing = isinstance(exc, ImportError) or any(m in str(exc) for m in ("not usable", "not registered"))
            row.update(status="unavailable" if missing else "error", error=_error_text(exc))
        _empty_cache(dev)
        rows.append(row)
        rec.put("backends", rows)
    ok = [r for r in rows if r["status"] == "ok"]
    if ok:
        best = min(ok, key=lambda r: r["seconds"])
        rec.put("best", {k: best[k] for k in ("backend", "seconds", "fraction_of_matmul", "peak_memory_bytes")})


def section_sampling(rec: Recorder, opts: dict) -> None:
    """One multi-view-CFG DDIM step (``sampler.sample``, steps=1, mode 1: every view generated) of the same
    set: the conditional joint pass plus one unconditional pass per view, batched and then sequential."""
    from ..mmvdm.configs import memory_breakdown
    from ..mmvdm.guidance import guidance_scales
    from ..mmvdm.sampler import sample

    dev = _device(opts)
    config, s, t, h, model, inputs = _build_mmvdm(opts, dev)
    est = memory_breakdown(config, s["views"], s["frames"], s["res"], torch.bfloat16, "multiview")
    rec.put("setting", {**s, "latent_frames": t, "tokens": est["tokens"], "guidance": "multiview"})
    rec.put("estimate_bytes", est)
    rec.put("goal_bytes", int(24 * GB))
    shape = tuple(inputs["latents"].shape[1:])
    scales = guidance_scales([60.0 * v / max(1, s["views"] - 1) for v in range(s["views"])])
    runs = []
    for label, sub_batch in (("batched", None), ("sequential", 1)):
        _reset_peak(dev)
        t0 = time.perf_counter()
        try:
            out = sample(model, shape, inputs["ref"][0], inputs["cond"][0], inputs["ref_cond"][0], steps=1,
                         guidance="multiview", guidance_scale=scales, seed=0, sub_batch=sub_batch, device=dev)
            sync(dev)
            peak, reserved = _peak(dev)
            runs.append({"cfg_passes": label, "status": "ok", "seconds": round(time.perf_counter() - t0, 3),
                         "peak_memory_bytes": peak, "peak_reserved_bytes": reserved,
                         "meets_goal": None if peak is None else bool(peak <= 24 * GB),
                         "finite": bool(torch.isfinite(out).all()), "output_shape": list(out.shape)})
        except Exception as exc:
            runs.append({"cfg_passes": label, "status": "error", "error": _error_text(exc)})
        _empty_cache(dev)
        rec.put("steps", runs)


def section_cap4d(rec: Recorder, opts: dict) -> None:
    """The CAP4D forward (one CFG 8-view forward at 512², random weights) through ``backend.cap4d.bench``."""
    try:
        importlib.import_module("backend.cap4d")
    except ImportError as exc:
        rec.put("skipped", f"backend.cap4d is not part of this build ({_error_text(exc)})")
        return
    try:
        bench = importlib.import_module("backend.cap4d.bench")
    except ImportError as exc:
        rec.put("skipped", f"backend.cap4d has no bench module ({_error_text(exc)})")
        return
    fn = getattr(bench, "bench_cap4d", None) or getattr(bench, "run_bench", None)
    if not callable(fn):
        rec.put("skipped", "backend.cap4d.bench exposes no bench_cap4d function")
        return
    dev = _device(opts)
    wanted = {"device": str(dev), "dtype": "bf16", **opts.get("cap4d_setting", {})}
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in wanted.items() if k in params}
    rec.put("called", f"backend.cap4d.bench.{fn.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")
    rec.put("result", fn(**kwargs))


def render_agreement_inputs(n: int = 3000, seed: int = 6):
    """The scene of tests/backend/test_gaussians_render.py::test_cuda_gsplat_matches_the_cpu_path."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    args = [d * 0.1, torch.randn(n, 4, generator=g), torch.rand(n, 3, generator=g) * 0.006 + 0.002,
            torch.rand(n, generator=g) * 0.8 + 0.1, torch.randn(n, 16, 3, generator=g) * 0.3]
    V = torch.eye(4)[None]
    V[0, 2, 3] = 0.6
    K = torch.tensor([[[119.4, 0, 31.5], [0, 119.4, 31.5], [0, 0, 1]]])
    return args, V, K


def gradients_agree(cuda_grad: torch.Tensor, cpu_grad: torch.Tensor) -> torch.Tensor:
    """Elementwise agreement of a CUDA and a CPU gradient: rtol 1e-2, atol 1e-4 of the gradient's scale.

    The absolute tolerance scales with the gradient because float32 sums over a splat's pixels in a
    different order on each side: on the H200 (2026-12-04) the means' gradients, up to ~800 in size,
    differed by at most 0.029 (3.6e-5 of their scale), and a fixed atol of 1e-3 failed one element of
    9000 whose true value is near zero.
    """
    atol = 1e-4 * float(cpu_grad.abs().max()) + 1e-6
    return torch.isclose(cuda_grad, cpu_grad, atol=atol, rtol=1e-2)


def section_render(rec: Recorder, opts: dict) -> None:
    """gsplat's CUDA rasterizer vs the CPU compositor, forward and gradients, on the CUDA test's scene."""
    from ..render.gaussians import rasterize

    dev = _device(opts)
    args, V, K = render_agreement_inputs()
    cpu_in = [a.clone().requires_grad_(True) for a in args]
    gpu_in = [a.to(dev).requires_grad_(True) for a in args]
    cpu = rasterize(*cpu_in, V, K, 64, 64, backend="torch")
    gpu = rasterize(*gpu_in, V.to(dev), K.to(dev), 64, 64, backend="auto")
    diff = {name: float((getattr(gpu, name).detach().cpu() - getattr(cpu, name).detach()).abs().max())
            for name in ("rgb", "alpha", "depth")}
    diff["radii_mismatches"] = int((gpu.radii.cpu() != cpu.radii).sum())
    rec.put("forward_max_abs_diff", diff)
    cpu.rgb.sum().backward()
    gpu.rgb.sum().backward()
    names = ("means", "quats", "scales", "opacities", "colors")
    grads = {}
    for name, a, b in zip(names, cpu_in, gpu_in):
        err = (b.grad.cpu() - a.grad).abs()
        grads[name] = {"max_abs": float(err.max()), "max_rel": float((err / (a.grad.abs() + 1e-3)).max())}
    rec.put("gradient_diff", grads)
    # where they differ: how many splats fall outside the tolerance, and what the worst ones look like
    bad = {name: int((~gradients_agree(b.grad.cpu(), a.grad)).reshape(len(a.grad), -1).any(-1).sum())
           for name, a, b in zip(names, cpu_in, gpu_in)}
    rec.put("gradient_splats_outside_tolerance", bad)
    err = (gpu_in[0].grad.cpu() - cpu_in[0].grad).abs().amax(-1)
    worst = torch.argsort(err, descending=True)[:5]
    rec.put("means_gradient_worst_splats", [{
        "index": int(i), "cpu_grad": [round(float(x), 5) for x in cpu_in[0].grad[i]],
        "cuda_grad": [round(float(x), 5) for x in gpu_in[0].grad[i].cpu()],
        "opacity": round(float(args[3][i]), 4), "radii": [int(r) for r in cpu.radii[0, i]],
        "means2d": [round(float(x), 2) for x in cpu.means2d[0, i].detach()],
        "depth": round(float(args[0][i, 2] + 0.6), 4)} for i in worst])
    ok_fwd = max(diff["rgb"], diff["alpha"], diff["depth"]) <= 2e-3 and diff["radii_mismatches"] == 0
    ok_grad = all(bool(gradients_agree(b.grad.cpu(), a.grad).all()) for a, b in zip(cpu_in, gpu_in))
    rec.put("tolerances", "forward atol 2e-3, radii equal; gradients rtol 1e-2, atol 1e-4 of each gradient's "
                          "largest magnitude (the CUDA test's)")
    rec.put("agree", bool(ok_fwd and ok_grad))
    # speed of the CUDA rasterizer at the fit's size: 512², a 120-ring camera count batch of 1, 100k splats
    n = int(opts.get("render_splats", 100_000))
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    big = [t.to(dev).requires_grad_(True) for t in (d * 0.1, torch.randn(n, 4, generator=g),
                                                    torch.rand(n, 3, generator=g) * 0.004 + 0.001,
                                                    torch.rand(n, generator=g) * 0.8 + 0.1,
                                                    torch.randn(n, 16, 3, generator=g) * 0.3)]
    Kb = torch.tensor([[[955.2, 0, 255.5], [0, 955.2, 255.5], [0, 0, 1]]], device=dev)
    times = []
    for i in range(int(opts.get("render_repeats", 6))):
        sync(dev)
        t0 = time.perf_counter()
        out = rasterize(*big, V.to(dev), Kb, 512, 512, backend="auto")
        out.rgb.sum().backward()
        sync(dev)
        if i:
            times.append(time.perf_counter() - t0)
    rec.put("speed_splats", n)
    rec.put("forward_backward_512px_seconds", round(sorted(times)[len(times) // 2], 5))


def section_fit(rec: Recorder, opts: dict) -> None:
    """Avatar-fit iterations per second (``backend.avatar.bench.run_bench``, preset 120, CUDA) on a job
    folder that holds the 120 ring's track and corpus at 512² (copied, so the source stays untouched)."""
    from ..avatar.bench import run_bench

    dev = _device(opts)
    src = opts.get("fit_job")
    if not src or not (Path(src) / "stages" / "corpus" / "done.json").is_file():
        rec.put("skipped", f"no job folder with a finished corpus (fit_job={src!r}); see the fit-job preparation "
                           "in the check's log")
        return
    with tempfile.TemporaryDirectory(prefix="mvp4d-gpucheck-fit-") as tmp:
        job = Path(tmp) / "job"
        shutil.copytree(src, job)
        spec = json.loads((job / "job.json").read_text())
        rec.put("job", {"preset": spec["cameras"]["preset"], "resolution": spec["cameras"]["resolution"],
                        "frames": spec["animation"]["num_frames"]})
        iters = int(opts.get("fit_iterations", 300))
        r = run_bench(spec["cameras"]["preset"], iterations=iters, device=str(dev), eval_every=iters, job_dir=job)
    rec.put("result", r)
    rec.put("iterations_per_second", r["iterations_per_second"])


SECTIONS: dict[str, Callable[[Recorder, dict], None]] = {
    "device": section_device, "mmvdm": section_mmvdm, "sampling": section_sampling, "cap4d": section_cap4d,
    "render": section_render, "fit": section_fit,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend.gpucheck.sections")
    p.add_argument("name", choices=list(SECTIONS))
    p.add_argument("--result", required=True)
    p.add_argument("--options", default="{}", help="JSON object of section options")
    a = p.parse_args(argv)
    rec = Recorder(Path(a.result))
    try:
        SECTIONS[a.name](rec, json.loads(a.options))
    except Exception as exc:  # recorded, never raised: the runner reads the file
        rec.put("error", _error_text(exc))
        rec.put("traceback", traceback.format_exc()[-4000:])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
