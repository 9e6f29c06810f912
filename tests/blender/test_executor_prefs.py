"""The executor chosen in the preferences reaches the backend's command line, and the backend accepts it."""

from __future__ import annotations

import os
import subprocess
from importlib import import_module

from .conftest import ADDON, BACKEND_PYTHON, REPO, prefs


def test_executor_preference_becomes_run_options(addon, tmp_path):
    common = import_module(f"{ADDON}.blender.common")
    p = prefs()
    p.executor = "LOCAL"
    assert common.executor_args() == []  # the job keeps the executor its job.json names
    p.executor, p.ray_address, p.gpus_per_unit = "RAY", " 10.0.0.5:6379 ", 2.0
    args = common.executor_args()
    assert args == ["--executor", "ray", "--gpus-per-unit", "2", "--ray-address", "10.0.0.5:6379"]
    p.executor, p.ray_address = "LOCAL", ""
    # the backend parses exactly these options (a missing job folder is its error, not the options)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLENDER_")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([str(BACKEND_PYTHON), "-m", "backend", "run", str(tmp_path / "nojob"), *args],
                         capture_output=True, text=True, timeout=120, cwd=str(REPO), env=env)
    assert out.returncode == 1 and "unrecognized arguments" not in out.stderr, out
    assert "no job.json" in out.stdout or "BAD_INPUT" in out.stdout, out  # options parsed; the job is missing
