"""The GPU check's command line and orchestration (see the package docstring for what it measures).

``python -m backend.gpucheck [--out-dir DIR] [--budget S] [--fit-job DIR] [--only a,b]``: runs the
sections, each a child process (``backend.gpucheck.sections``) with a wall-clock budget, inside one
overall budget; after every section the check's JSON is rewritten (atomically), so a check cut short
keeps what it measured. Without ``--out-dir`` the JSON goes to ``docs/benchmarks/gpu-<date>.json`` and
its table into ``docs/benchmarks.md``; with it, ``DIR/gpu-<date>.json``, ``DIR/gpu-<date>.md``, the
children's log and gsplat's build log go to DIR (merge later with ``--merge DIR/gpu-<date>.json``).

``--prepare DIR`` (any machine with the full install, CPU is enough): builds the fit section's job
folder — the embedded astronaut tracked, the 120 ring's corpus at 512² with 5 frames — so that a GPU
machine without MediaPipe, or short on time, can carry it (``--fit-job``).

Without CUDA the check prints one line saying so and exits 2 (no traceback).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from ..fsutil import write_json_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[2]
EXIT_NO_CUDA = 2
#: the fit section's job: the 120 ring at 512², few frames (iterations/s does not depend on the count)
FIT_JOB_ARGS = ["--preset", "120", "--frames", "5", "--resolution", "512"]
#: ``--cpu-smoke``: every section on the CPU at tiny sizes (checks an installation and the check itself)
CPU_SMOKE = {"device": "cpu", "mmvdm_size": "tiny", "mmvdm_setting": {"views": 2, "frames": 5, "res": 32},
             "render_splats": 300, "render_repeats": 2, "fit_iterations": 5,
             "cap4d_setting": {"size": "tiny", "views": 2, "res": 64, "steps": 1, "dtype": "fp32"}}
DEFAULT_FIT_JOB = REPO / ".whl" / "gpu-check-job"


@dataclass
class Section:
    """One measurement: ``argv`` of its child process (which writes ``--result FILE``), its budget."""

    name: str
    budget_s: float
    needs: tuple[str, ...] = ()  # background tasks that must have finished ("gsplat", "fit_job")
    argv: list[str] | None = None  # default: python -m backend.gpucheck.sections NAME
    options: dict[str, Any] = field(default_factory=dict)


def default_sections() -> list[Section]:
    return [Section("device", 60), Section("mmvdm", 150), Section("sampling", 75), Section("cap4d", 60),
            Section("render", 60, needs=("gsplat",)), Section("fit", 150, needs=("gsplat", "fit_job"))]


class Background:
    """A child process started now and waited for later, bounded (the gsplat build, the fit job)."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str], cwd: Path):
        self.name, self.log, self.t0 = name, log, time.time()
        self._fh = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._fh, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     start_new_session=True)
        self.result: dict[str, Any] | None = None

    def wait(self, timeout: float) -> dict[str, Any]:
        """``{"status": ok|error|timeout, "seconds", "log_tail"}``; a timeout kills the process group."""
        if self.result is not None:
            return self.result
        try:
            rc = self.proc.wait(timeout=max(0.0, timeout))
            status = "ok" if rc == 0 else "error"
        except subprocess.TimeoutExpired:
            _kill(self.proc)
            rc, status = None, "timeout"
        self._fh.close()
        tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
        self.result = {"status": status, "returncode": rc, "seconds": round(time.time() - self.t0, 1),
                       "log_tail": tail if status != "ok" else tail[-300:]}
        return self.result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.wait(0)


def _kill(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_section(section: Section, timeout: float, log: TextIO, env: dict[str, str],
                options: dict[str, Any]) -> dict[str, Any]:
    """Run one section's child with ``timeout``; return its result with ``status`` and ``wall_seconds``."""
    with tempfile.TemporaryDirectory(prefix="mvp4d-gpucheck-") as tmp:
        result_file = Path(tmp) / "result.json"
        argv = section.argv or [sys.executable, "-m", "backend.gpucheck.sections", section.name]
        argv = argv + ["--result", str(result_file), "--options", json.dumps({**options, **section.options})]
        log.write(f"\n===== section {section.name} (budget {timeout:.0f} s) =====\n")
        log.flush()
        t0 = time.time()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            rc = None
        wall = round(time.time() - t0, 1)
        try:
            data = json.loads(result_file.read_text()) if result_file.exists() else {}
        except json.JSONDecodeError as exc:
            data = {"error": f"unreadable result file: {exc}"}
    if rc is None:
        status = "timeout"
        data["error"] = data.get("error") or f"stopped at its {timeout:.0f} s budget (measurements so far kept)"
    elif rc == 0:
        status = "skipped" if "skipped" in data else "ok"
    else:
        status = "error"
        data.setdefault("error", f"the section's process exited with code {rc} (see the check's log)")
    return {"status": status, "wall_seconds": wall, **data}


def _summary(name: str, r: dict[str, Any]) -> str:
    if r["status"] == "skipped":
        return f"skipped: {r.get('skipped', '')}"
    if r["status"] != "ok":
        return f"{r['status']}: {r.get('error', '')}"
    brief = {"device": lambda: f"{r.get('device_name')}, bf16 matmul {r.get('matmul_bf16_tflops')} TFLOP/s",
             "mmvdm": lambda: f"best {r.get('best')}",
             "sampling": lambda: ", ".join(f"{s['cfg_passes']} {(s.get('peak_memory_bytes') or 0) / 1e9:.1f} GB"
                                           for s in r.get("steps", [])),
             "render": lambda: f"agree={r.get('agree')}", "fit": lambda: f"{r.get('iterations_per_second')} it/s"}
    try:
        return "ok" + (f" ({brief[name]()})" if name in brief else "")
    except Exception:  # a summary line must never stop the check
        return "ok"


def run_check(sections: list[Section], json_path: Path, budget_s: float, log_path: Path,
              background: dict[str, Callable[[], Background]] | None = None, options: dict[str, Any] | None = None,
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``sections`` in order within ``budget_s``; rewrite ``json_path`` after each; return the result."""
    t_start = time.time()
    deadline = t_start + budget_s
    env = _child_env()
    options = dict(options or {})
    result: dict[str, Any] = {
        "schema": "mvp4d-gpu-check/1", "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
        "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "host": socket.gethostname(),
        "budget_s": budget_s, "sections": {}, "background": {},
    }
    write_json_atomic(json_path, result)
    jobs = {name: start() for name, start in (background or {}).items()}
    try:
        with open(log_path, "a") as log:
            for s in sections:
                remaining = deadline - time.time() - 3
                for need in s.needs:
                    if need in jobs and jobs[need].result is None:
                        later = sum(x.budget_s for x in sections[sections.index(s):]) * 0.4
                        echo(f"[{time.time() - t_start:5.0f}s] waiting for {need} (at most {max(0, remaining - later):.0f} s)")
                        result["background"][need] = jobs[need].wait(remaining - later)
                        write_json_atomic(json_path, result)
                remaining = deadline - time.time() - 3
                failed = [n for n in s.needs if n in jobs and jobs[n].result["status"] != "ok"]
                if failed:
                    r = {"status": "skipped", "skipped": f"{failed[0]} did not finish: {jobs[failed[0]].result['status']}"
                         f" after {jobs[failed[0]].result['seconds']} s (its log tail is under background)"}
                elif remaining < 10:
                    r = {"status": "skipped", "skipped": f"no time left in the {budget_s:.0f} s budget"}
                else:
                    r = run_section(s, min(s.budget_s, remaining), log, env, options)
                if s.name == "device" and r.get("matmul_bf16_tflops"):
                    options["matmul_tflops"] = r["matmul_bf16_tflops"]
                result["sections"][s.name] = r
                write_json_atomic(json_path, result)
                echo(f"[{time.time() - t_start:5.0f}s] {s.name}: {_summary(s.name, r)}")
    finally:
        for name, job in jobs.items():
            job.stop()
            result["background"][name] = job.result
    result["total_seconds"] = round(time.time() - t_start, 1)
    result["finished_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(json_path, result)
    return result


def _gsplat_build(log: Path, env: dict[str, str]) -> Callable[[], Background]:
    code = ("import sys; from gsplat.cuda._backend import _C; "
            "sys.exit(0 if _C is not None else 'gsplat: no CUDA toolkit found, the extension was not built')")
    return lambda: Background("gsplat", [sys.executable, "-c", code], log, env, REPO)


def _fit_job(src: Path | None, work: Path, log: Path, env: dict[str, str], tiny: bool) -> Callable[[], Background]:
    """Copy a prepared job (resume: builds the corpus if only the track is there) or build one from scratch."""
    def start() -> Background:
        if src is not None and (src / "job.json").is_file():
            shutil.copytree(src, work)
            argv = [sys.executable, "-m", "backend", "run", str(work), "--until", "corpus"]
        else:
            argv = [sys.executable, "-m", "backend.gpucheck", "--prepare", str(work)] + (["--cpu-smoke"] if tiny else [])
        return Background("fit_job", argv, log, env, REPO)
    return start


def prepare_fit_job(out: Path, tiny: bool = False) -> int:
    """Build the fit section's job folder at ``out`` (track + corpus of the 120 ring, 5 frames, 512²; with
    ``tiny`` the tiny preset)."""
    from ..cli import main as cli_main
    from ..tracking.image import default_reference_image, save_png_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    image = out.parent / f".{out.name}-astronaut.png"
    if not image.exists():
        save_png_atomic(image, default_reference_image())
    return cli_main(["corpus", "--image", str(image), "--out", str(out), *(["--preset", "tiny"] if tiny else FIT_JOB_ARGS)])


def _no_cuda_message() -> str | None:
    try:
        import torch
    except ImportError:
        return "gpu-check: torch is not installed here; install the backend (make install) on a GPU machine."
    if torch.cuda.is_available():
        return None
    return (f"gpu-check: no CUDA GPU is visible (torch {torch.__version__}, CUDA build: "
            f"{torch.version.cuda or 'none'}). This check measures the GPU paths; run it on a machine with an "
            "NVIDIA GPU and a CUDA build of torch (docs/benchmarks.md, 'GPU check'). Nothing was measured.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend gpu-check", description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=None, help="write gpu-<date>.json/.md and the logs here instead of docs/")
    p.add_argument("--budget", type=float, default=450.0, help="overall wall-clock budget in seconds (default 450)")
    p.add_argument("--fit-job", default=None, help=f"prepared fit job folder (default {DEFAULT_FIT_JOB} if present)")
    p.add_argument("--fit-iterations", type=int, default=300)
    p.add_argument("--only", default=None, help="comma-separated sections (default: all)")
    p.add_argument("--merge", default=None, metavar="JSON", help="put a check's JSON and table into docs/ and exit")
    p.add_argument("--prepare", default=None, metavar="DIR", help="build the fit job folder at DIR and exit")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="run every section on the CPU at tiny sizes: checks the installation, the numbers mean nothing")
    a = p.parse_args(argv)
    from .report import merge, render_table

    if a.merge:
        md = merge(Path(a.merge), REPO / "docs" / "benchmarks", REPO / "docs" / "benchmarks.md")
        print(f"gpu-check: merged {a.merge} into {md}")
        return 0
    if a.prepare:
        return prepare_fit_job(Path(a.prepare).resolve(), tiny=a.cpu_smoke)
    message = None if a.cpu_smoke else _no_cuda_message()
    if message:
        print(message, file=sys.stderr)
        return EXIT_NO_CUDA
    if not a.cpu_smoke:
        import torch

        major, minor = torch.cuda.get_device_capability(0)
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")  # gsplat: build for this GPU only
        os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    out_dir = Path(a.out_dir) if a.out_dir else REPO / "out" / "gpu-check"  # logs stay in out/ (ignored)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"gpu-{date}.json"
    sections = default_sections()
    if a.cpu_smoke:  # the CPU compositor needs no gsplat build
        for s in sections:
            s.needs = tuple(n for n in s.needs if n != "gsplat")
    if a.only:
        wanted = set(a.only.split(","))
        sections = [s for s in sections if s.name in wanted]
    env = _child_env()
    fit_src = Path(a.fit_job) if a.fit_job else (DEFAULT_FIT_JOB if DEFAULT_FIT_JOB.is_dir() and not a.cpu_smoke else None)
    work = Path(tempfile.mkdtemp(prefix="mvp4d-gpucheck-work-"))
    background = {"gsplat": _gsplat_build(out_dir / f"gsplat-build-{date}.log", env),
                  "fit_job": _fit_job(fit_src, work / "fit-job", out_dir / f"fit-job-{date}.log", env, a.cpu_smoke)}
    needed = {n for s in sections for n in s.needs}
    background = {k: v for k, v in background.items() if k in needed}
    print(f"gpu-check: {len(sections)} sections, budget {a.budget:.0f} s, results in {json_path}", flush=True)
    try:
        result = run_check(sections, json_path, a.budget, out_dir / f"gpu-check-{date}.log", background,
                           {"fit_job": str(work / "fit-job"), "fit_iterations": a.fit_iterations,
                            **(CPU_SMOKE if a.cpu_smoke else {})},
                           echo=lambda m: print(m, flush=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    try:
        table = render_table(result)
    except Exception as exc:  # the JSON is written; a table bug must not hide it
        table = f"(the table could not be rendered: {type(exc).__name__}: {exc}; see {json_path.name})\n"
    write_text_atomic(out_dir / f"gpu-{date}.md", table)
    if not a.out_dir:
        md = merge(json_path, REPO / "docs" / "benchmarks", REPO / "docs" / "benchmarks.md")
        print(f"gpu-check: wrote docs/benchmarks/{json_path.name} and the table in {md} (logs in {out_dir})")
    bad = [n for n, r in result["sections"].items() if r["status"] in ("error", "timeout")]
    print(f"gpu-check: done in {result['total_seconds']} s" + (f"; failed: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0
