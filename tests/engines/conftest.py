"""Engine-export tests: one torch thread (the toy bundles are posed by the torch FLAME), as the backend tests."""

from tests.backend.conftest import one_torch_thread  # noqa: F401
