"""Shared pytest setup: fixtures that build small data the tests need (nothing is downloaded)."""

from __future__ import annotations

import os

# Keep MediaPipe/absl and TensorFlow Lite quiet in test output.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests read the backend's JSON event lines, also under `pytest -s` on a terminal (backend/console.py).
os.environ.setdefault("MVP4D_OUTPUT", "json")
