"""The GPU check's Markdown table, and ``--merge``: a check's JSON into docs/benchmarks/ and docs/benchmarks.md.

Each check's table sits in ``docs/benchmarks.md`` between ``<!-- gpu-check:STEM -->`` and
``<!-- /gpu-check:STEM -->`` (STEM = the JSON's name without ``.json``) under the heading
``## GPU check results``: merging the same JSON again replaces its block, a new one is added on top.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..fsutil import write_text_atomic

HEADING = "## GPU check results"
PLACEHOLDER = "No GPU check has been run yet.\n"


def _gb(b: Any) -> str:
    return "–" if b is None else f"{b / 1e9:.1f} GB"


def _status_line(r: dict[str, Any]) -> str | None:
    if r.get("status") == "ok":
        return None
    why = r.get("skipped") or r.get("error") or ""
    return f"{r.get('status', '?')}: {why}".replace("|", "\\|").replace("\n", " ")


def render_table(result: dict[str, Any]) -> str:
    """The Markdown block for one check (headline table, then the MMVDM backends and the sampling steps)."""
    sec = result.get("sections", {})
    dev = sec.get("device", {})
    name = dev.get("device_name", "unknown GPU")
    lines = [f"### {result.get('date', '?')}: {name}", "",
             f"`make gpu-check` on {result.get('host', '?')}, {result.get('total_seconds', '?')} s in all "
             f"(budget {result.get('budget_s', '?')} s). JSON: `docs/benchmarks/gpu-{result.get('date', '?')}.json`.",
             "", "| what | measured |", "|---|---|"]
    row = lambda k, v: lines.append(f"| {k} | {v} |")  # noqa: E731
    if dev.get("status") == "ok":
        pk = dev.get("packages", {})
        row("device", f"{name}, {_gb(dev.get('memory_bytes'))}, compute capability {dev.get('capability')}, "
                      f"{dev.get('multiprocessors')} SMs, driver {dev.get('driver')}")
        row("software", f"torch {dev.get('torch')} (CUDA {dev.get('cuda')}, cuDNN {dev.get('cudnn')}), Python "
                        f"{dev.get('python')}, diffusers {pk.get('diffusers')}, gsplat {pk.get('gsplat')}")
        row("bf16 matmul 8192³ (best of 3)", f"{dev.get('matmul_bf16_tflops')} TFLOP/s")
    else:
        row("device", _status_line(dev) or "not run")
    mm = sec.get("mmvdm", {})
    st = mm.get("setting", {})
    label = (f"MMVDM {st.get('size', '2b')} forward, {st.get('views')}×{st.get('frames')}×{st.get('res')}² "
             f"({st.get('tokens')} tokens)") if st else "MMVDM 2B forward"
    best = mm.get("best")
    row(label, f"{best['seconds']} s ({best['backend']}), {100 * best['fraction_of_matmul']:.0f} % of matmul, "
               f"peak {_gb(best['peak_memory_bytes'])}" if best else (_status_line(mm) or "no backend ran"))
    sa = sec.get("sampling", {})
    steps = [s for s in sa.get("steps", []) if s.get("status") == "ok"]
    row("one multi-view-CFG sampling step, peak memory (goal ≤ 24 GB)",
        ", ".join(f"{s['cfg_passes']} uncond. passes {_gb(s['peak_memory_bytes'])} in {s['seconds']} s"
                  for s in steps) if steps else (_status_line(sa) or "not run"))
    cap = sec.get("cap4d", {})
    row("CAP4D forward", _status_line(cap) or f"`{cap.get('result')}`")
    rd = sec.get("render", {})
    if rd.get("status") == "ok":
        f = rd["forward_max_abs_diff"]
        row("gsplat CUDA vs CPU renderer", f"{'agree' if rd['agree'] else 'DISAGREE'} (max abs diff rgb {f['rgb']:.1e}, "
                                          f"alpha {f['alpha']:.1e}, depth {f['depth']:.1e}; {rd['tolerances']})")
        row(f"gsplat forward+backward, {rd.get('speed_splats')} splats, 512²", f"{rd['forward_backward_512px_seconds']} s")
    else:
        row("gsplat CUDA vs CPU renderer", _status_line(rd) or "not run")
    fit = sec.get("fit", {})
    job = fit.get("job") or {"preset": "120", "resolution": 512}
    fit_label = f"avatar fit, preset {job.get('preset')} at {job.get('resolution') or 'the preset'}², gsplat CUDA"
    if fit.get("status") == "ok":
        r = fit["result"]
        row(fit_label,
            f"{r['iterations_per_second']} it/s over {r['iterations']} iterations, {r['num_gaussians']} Gaussians, "
            f"peak {r['peak_memory_mb'] / 1000:.1f} GB")
    else:
        row(fit_label, _status_line(fit) or "not run")
    build = result.get("background", {}).get("gsplat")
    if build:
        row("gsplat CUDA extension JIT build", f"{build['status']} in {build['seconds']} s")
    if mm.get("backends"):
        lines += ["", "| MMVDM attention backend | s / forward | TFLOP/s | fraction of matmul | peak memory |",
                  "|---|---|---|---|---|"]
        for b in mm["backends"]:
            if b["status"] == "ok":
                lines.append(f"| {b['backend']} | {b['seconds']} | {b['achieved_tflops']} | "
                             f"{100 * b['fraction_of_matmul']:.0f} % | {_gb(b['peak_memory_bytes'])} |")
            else:
                err = b.get("error", "").replace("|", "\\|")[:160]
                lines.append(f"| {b['backend']} | {b['status']}: {err} | | | |")
    return "\n".join(lines) + "\n"


def merge(json_path: Path, docs_dir: Path, md_path: Path) -> Path:
    """Copy ``json_path`` into ``docs_dir`` (unless it is there) and put its table into ``md_path``."""
    import json

    result = json.loads(Path(json_path).read_text())
    docs_dir.mkdir(parents=True, exist_ok=True)
    target = docs_dir / Path(json_path).name
    if Path(json_path).resolve() != target.resolve():
        shutil.copyfile(json_path, target)
    stem = target.stem
    begin, end = f"<!-- gpu-check:{stem} -->", f"<!-- /gpu-check:{stem} -->"
    block = f"{begin}\n{render_table(result)}{end}"
    text = md_path.read_text() if md_path.exists() else "# Benchmarks\n"
    text = text.replace(PLACEHOLDER, "")
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    elif HEADING in text:
        head, rest = text.split(HEADING, 1)
        text = f"{head}{HEADING}\n\n{block}\n\n{rest.lstrip(chr(10))}"
    else:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\n{block}\n"
    write_text_atomic(md_path, text)
    return md_path
