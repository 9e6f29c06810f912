"""Backend unit tests run torch single-threaded.

The tests use tiny tensors; on the project's 2 shared cores two threads were measured 5-100x slower
than one for such workloads (thread hand-off dominates), so every backend test gets one thread.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def job(tmp_path):
    """A created job folder (default spec) whose reference "image" is a stand-in file: for tests of the job
    machinery (stages, events, validation) that never decode it."""
    from backend.jobs import create_job
    from backend.protocol import InputsSpec, JobSpec

    img = tmp_path / "face.png"
    img.write_bytes(b"\x89PNG fake")
    create_job(tmp_path / "job", img, JobSpec(inputs=InputsSpec(reference_image="")))
    return tmp_path / "job"
