"""backend/threads.py: the CPU thread count of a step, set for its duration and restored."""

from __future__ import annotations

import torch

from backend.threads import torch_threads


def test_threads_are_set_and_restored():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with torch_threads(None):  # the GPU presets: leave torch's default
            assert torch.get_num_threads() == 2
        try:
            with torch_threads(1):
                raise RuntimeError("a failing step")
        except RuntimeError:
            pass
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
