"""``make gpu-check`` / ``tools/gpu_check.sh`` / ``python -m backend gpu-check``: measure everything on one GPU.

One short run (under 8 minutes on one H100/H200-class GPU) that writes ``gpu-<date>.json`` and a Markdown
table (``docs/benchmarks/`` and ``docs/benchmarks.md``, or ``--out-dir``). Sections, each in its own
process with its own time budget (a hang, a crash or a poisoned CUDA context costs only that section),
results written to the JSON after every section (and inside a section after every measurement), errors
recorded as text:

* ``device``: GPU name, memory, torch / CUDA / cuDNN / driver versions, the dense bf16 matmul rate;
* ``mmvdm``: the 2B MMVDM forward at 8 views × 49 frames × 512² (random weights at full size) with every
  attention backend diffusers' dispatcher offers here: seconds, fraction of the matmul rate (FLOPs from
  ``backend.mmvdm.configs.forward_flops``), peak memory;
* ``sampling``: one multi-view-CFG DDIM step of the same set (conditional pass + per-view unconditional
  passes): peak memory against the 24 GB goal;
* ``cap4d``: the CAP4D forward, where ``backend.cap4d.bench.run_bench`` exists (else skipped, with why);
* ``render``: gsplat's CUDA rasterizer against the CPU compositor (the CUDA test CI always skips);
* ``fit``: avatar-fit iterations per second on gsplat's CUDA path at 512² with the 120 ring.

gsplat from PyPI compiles its CUDA extension on first use: the runner starts that build in the
background at once (``MAX_JOBS`` = CPU count, this GPU's architecture only) and waits for it, bounded,
only before the two gsplat sections.

Modules: ``runner`` (CLI, orchestration, JSON), ``sections`` (the measurements, run in child processes),
``report`` (Markdown table, ``--merge`` into docs/benchmarks.md).
"""
