"""The GPU check (backend/gpucheck): no-CUDA exit, section isolation and budgets, incremental JSON, the
sections' code paths on the CPU at tiny sizes, the Markdown table and --merge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from backend.gpucheck import report, runner, sections

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_the_script_says_so_and_exits_nonzero_without_traceback(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    p = subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), "--out-dir", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == runner.EXIT_NO_CUDA
    assert "no CUDA GPU is visible" in p.stderr and "Nothing was measured" in p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    assert not list(tmp_path.iterdir())  # nothing written


def _fake(code: str) -> list[str]:
    """A section child that gets ``--result FILE --options JSON`` like the real one."""
    head = "import json, sys, time\nres = sys.argv[sys.argv.index('--result') + 1]\n"
    head += "def put(d):\n    open(res, 'w').write(json.dumps(d))\n"
    return [sys.executable, "-c", head + textwrap.dedent(code)]


def test_sections_are_isolated_budgeted_and_written_incrementally(tmp_path):
    out = tmp_path / "gpu.json"
    seen: list[dict] = []

    def echo(msg: str) -> None:  # the JSON on disk after each section
        if "waiting for" not in msg:
            seen.append(json.loads(out.read_text()))

    secs = [
        runner.Section("a", 30, argv=_fake("put({'x': 1})")),
        runner.Section("boom", 30, argv=_fake("put({'first': 2})\nraise SystemExit(3)")),
        runner.Section("slow", 3, argv=_fake("put({'partial': 7})\ntime.sleep(60)")),
        runner.Section("needs", 30, needs=("bg",), argv=_fake("put({'never': 1})")),
        runner.Section("skip", 30, argv=_fake("put({'skipped': 'no such thing here'})")),
    ]
    bg = {"bg": lambda: runner.Background("bg", [sys.executable, "-c", "raise SystemExit('bg failed')"],
                                          tmp_path / "bg.log", dict(os.environ), tmp_path)}
    r = runner.run_check(secs, out, 60, tmp_path / "log.txt", bg, echo=echo)
    s = r["sections"]
    assert s["a"]["status"] == "ok" and s["a"]["x"] == 1
    assert s["boom"]["status"] == "error" and s["boom"]["first"] == 2 and "code 3" in s["boom"]["error"]
    assert s["slow"]["status"] == "timeout" and s["slow"]["partial"] == 7 and s["slow"]["wall_seconds"] < 20
    assert s["needs"]["status"] == "skipped" and "bg did not finish: error" in s["needs"]["skipped"]
    assert s["skip"]["status"] == "skipped"
    assert r["background"]["bg"]["status"] == "error" and "bg failed" in r["background"]["bg"]["log_tail"]
    order = ["a", "boom", "slow", "needs", "skip"]
    assert [sorted(x["sections"]) for x in seen] == [sorted(order[:i]) for i in range(1, 6)]
    assert json.loads(out.read_text())["total_seconds"] == r["total_seconds"]


def test_a_spent_budget_skips_the_remaining_sections(tmp_path):
    secs = [runner.Section("slow", 30, argv=_fake("time.sleep(60)")), runner.Section("late", 30, argv=_fake("put({})"))]
    r = runner.run_check(secs, tmp_path / "g.json", 15, tmp_path / "log", echo=lambda m: None)
    assert r["sections"]["slow"]["status"] == "timeout"
    assert r["sections"]["late"]["status"] == "skipped" and "budget" in r["sections"]["late"]["skipped"]


TINY = {"device": "cpu", "mmvdm_size": "tiny", "mmvdm_setting": {"views": 2, "frames": 5, "res": 32},
        "matmul_tflops": 0.5}


def test_mmvdm_and_sampling_sections_run_on_the_cpu_at_tiny_size(tmp_path, monkeypatch):
    monkeypatch.setattr(sections, "ATTENTION_BACKENDS", [("native (SDPA default)", None), ("math", "_native_math"),
                                                         ("made up", "no-such-backend")])
    rec = sections.Recorder(tmp_path / "m.json")
    sections.section_mmvdm(rec, TINY)
    rows = {b["backend"]: b for b in rec.data["backends"]}
    assert rows["native (SDPA default)"]["status"] == "ok" and rows["math"]["status"] == "ok"
    assert rows["native (SDPA default)"]["fraction_of_matmul"] > 0
    assert rows["made up"]["status"] in ("unavailable", "error") and rows["made up"]["error"]
    assert rec.data["setting"]["tokens"] == (1 + 2 * 2) * 2 * 2 and rec.data["best"]["seconds"] > 0
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads(json.dumps(rec.data, default=str))
    rec = sections.Recorder(tmp_path / "s.json")
    sections.section_sampling(rec, TINY)
    steps = rec.data["steps"]
    assert [s["cfg_passes"] for s in steps] == ["batched", "sequential"]
    assert all(s["status"] == "ok" and s["finite"] and s["output_shape"] == [2, 2, 4, 4, 4] for s in steps)
    assert rec.data["estimate_bytes"]["total"] > 0


def test_render_section_runs_its_comparison_code_on_the_cpu(tmp_path):
    rec = sections.Recorder(tmp_path / "r.json")
    sections.section_render(rec, {"device": "cpu", "render_splats": 300, "render_repeats": 2})
    assert rec.data["agree"] is True  # both sides are the CPU path here: identical
    assert rec.data["forward_max_abs_diff"]["rgb"] == 0.0 and rec.data["forward_backward_512px_seconds"] > 0


def test_cap4d_and_fit_sections_skip_with_a_reason(tmp_path):
    import importlib.util

    rec = sections.Recorder(tmp_path / "c.json")
    sections.section_cap4d(rec, {"device": "cpu"})
    if importlib.util.find_spec("backend.cap4d") is None:
        assert "backend.cap4d is not part of this build" in rec.data["skipped"]
    rec = sections.Recorder(tmp_path / "f.json")
    sections.section_fit(rec, {"device": "cpu", "fit_job": str(tmp_path / "missing")})
    assert "no job folder with a finished corpus" in rec.data["skipped"]


def _result() -> dict:
    return {"date": "2026-12-04", "host": "h", "budget_s": 450, "total_seconds": 300.0, "sections": {
        "device": {"status": "ok", "device_name": "NVIDIA H200", "memory_bytes": 150e9, "capability": "9.0",
                   "multiprocessors": 132, "driver": "580", "torch": "2.11", "cuda": "13.0", "cudnn": 91000,
                   "python": "3.12", "packages": {"diffusers": "0.42.1", "gsplat": "1.5.3"}, "matmul_bf16_tflops": 790.0},
        "mmvdm": {"status": "ok", "setting": {"views": 8, "frames": 49, "res": 512, "tokens": 107520},
                  "best": {"backend": "cuDNN", "seconds": 5.1, "fraction_of_matmul": 0.73, "peak_memory_bytes": 9e9},
                  "backends": [{"backend": "cuDNN", "status": "ok", "seconds": 5.1, "achieved_tflops": 578.0,
                                "fraction_of_matmul": 0.73, "peak_memory_bytes": 9e9},
                               {"backend": "flash", "status": "unavailable", "error": "ImportError: flash_attn | x"}]},
        "sampling": {"status": "ok", "steps": [{"cfg_passes": "batched", "status": "ok", "seconds": 7.0,
                                                 "peak_memory_bytes": 11e9}]},
        "cap4d": {"status": "skipped", "skipped": "backend.cap4d is not part of this build"},
        "render": {"status": "error", "error": "RuntimeError: gsplat"},
        "fit": {"status": "timeout", "error": "stopped at its 150 s budget"}},
        "background": {"gsplat": {"status": "ok", "seconds": 180.0}}}


def test_table_shows_every_section_and_merge_replaces_its_own_block(tmp_path):
    table = report.render_table(_result())
    for text in ("NVIDIA H200", "790.0 TFLOP/s", "5.1 s (cuDNN), 73 % of matmul, peak 9.0 GB", "batched uncond. passes 11.0 GB",
                 "skipped: backend.cap4d is not part", "error: RuntimeError: gsplat", "timeout: stopped",
                 "ok in 180.0 s", "flash | unavailable: ImportError: flash_attn \\| x"):
        assert text in table, text
    src = tmp_path / "run" / "gpu-2026-12-04.json"
    src.parent.mkdir()
    src.write_text(json.dumps(_result()))
    md = tmp_path / "benchmarks.md"
    md.write_text(f"# Benchmarks\n\nintro\n\n{report.HEADING}\n\n{report.PLACEHOLDER}\n## Next\n")
    report.merge(src, tmp_path / "benchmarks", md)
    report.merge(src, tmp_path / "benchmarks", md)  # again: replaced, not duplicated
    text = md.read_text()
    assert text.count("<!-- gpu-check:gpu-2026-12-04 -->") == 1 and text.count(report.HEADING) == 1
    assert text.startswith(f"# Benchmarks\n\nintro\n\n{report.HEADING}\n\n<!-- gpu-check:gpu-2026-12-04 -->\n### ")
    assert report.PLACEHOLDER not in text and text.endswith("<!-- /gpu-check:gpu-2026-12-04 -->\n\n## Next\n")
    assert "| bf16 matmul" in text
    assert json.loads((tmp_path / "benchmarks" / src.name).read_text()) == _result()


def test_cpu_smoke_runs_the_command_end_to_end_and_writes_json_and_table(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    p = subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), "--cpu-smoke", "--only", "device,cap4d",
                        "--out-dir", str(tmp_path), "--budget", "120"], env=env, capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    (js,) = tmp_path.glob("gpu-*.json")
    result = json.loads(js.read_text())
    assert result["sections"]["device"]["status"] == "ok" and result["sections"]["device"]["matmul_bf16_tflops"] > 0
    assert result["sections"]["cap4d"]["status"] in ("ok", "skipped")
    table = (tmp_path / (js.stem + ".md")).read_text()
    assert "| bf16 matmul 8192³ (best of 3) |" in table and "CAP4D forward" in table
    assert "Traceback" not in p.stdout + p.stderr
