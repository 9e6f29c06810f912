"""Helpers for end-to-end tests that drive ``python -m backend`` as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.protocol import Event

REPO = Path(__file__).resolve().parents[2]


def run_backend(*args: str, timeout: float = 300) -> tuple[int, list[Event], str]:
    """Run the CLI; return exit code, the events it printed on stdout, and stderr."""
    proc = subprocess.run([sys.executable, "-m", "backend", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    events = [Event.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, events, proc.stderr


@pytest.fixture(scope="session")
def astronaut_png(tmp_path_factory) -> Path:
    from skimage import data

    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    Image.fromarray(np.asarray(data.astronaut())).save(path)
    return path
