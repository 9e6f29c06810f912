"""The tool sub-commands are wired: bench, plan, weights print JSON and fail with codes."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import REPO


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_bench_mmvdm_tiny_prints_json():
    proc = _run("bench", "mmvdm", "--size", "tiny", "--steps", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["seconds_per_forward"] > 0 and result["tokens"] > 0 and result["flops_per_forward"] > 0


def test_weights_check_missing_folder_has_code(tmp_path):
    proc = _run("weights", "check", str(tmp_path / "nope"))
    assert proc.returncode == 1
    event = json.loads(proc.stdout.splitlines()[-1])
    assert (event["type"], event["code"]) == ("error", "WEIGHTS_MISSING") and event["hint"]


def test_unknown_bench_target_is_usage_error():
    proc = _run("bench", "teleport")
    assert proc.returncode == 2 and "bench" in proc.stderr


def test_training_tools_are_wired(tmp_path):
    # each reaches its own module: its own checks answer, with the codes of the machine interface
    proc = _run("train", "--config", str(tmp_path / "nope.toml"))
    event = json.loads(proc.stdout.splitlines()[-1])
    assert proc.returncode == 1 and (event["code"], event["stage"]) == ("BAD_INPUT", "train")
    assert "nope.toml" in event["message"]
    proc = _run("experiment", "cfg-ablation", "--preset", "nope")
    assert proc.returncode == 2 and "--preset" in proc.stderr and "smallest" in proc.stderr  # its own choices
    assert json.loads(proc.stdout.splitlines()[-1])["code"] == "BAD_INPUT"
    proc = _run("dataset", "validate", str(tmp_path / "no-dataset"))
    assert proc.returncode != 0
    assert "no-dataset" in (proc.stdout + proc.stderr)
