"""Shared pytest setup: fixtures that build small data the tests need (nothing is downloaded)."""

from __future__ import annotations

import os

# Keep MediaPipe/absl and TensorFlow Lite quiet in test output.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
