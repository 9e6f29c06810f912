"""Where the backend source is, and the contract module (``backend.protocol``) imported from it.

The extension zip ships the backend source in ``backend_src/`` (``backend/`` + ``pyproject.toml``)
so that (a) the add-on imports the one definition of the job spec, events and bundle keys
(``backend/protocol.py`` is pure Python; importing it never imports torch) and (b) the
"Install backend" button can pip-install exactly the backend this add-on was built with. In a source
checkout (development, tests) the repository root plays the role of ``backend_src/``.

The backend package is imported under a private name (``<this package>._backend``) so it can never
clash with another add-on's or the user's ``backend`` module inside Blender's Python.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
_PRIVATE = f"{__package__}._backend"


def backend_root() -> Path:
    """The folder holding ``backend/`` and ``pyproject.toml`` (goes on the backend's PYTHONPATH)."""
    shipped = PACKAGE_DIR / "backend_src"
    if (shipped / "backend" / "protocol.py").is_file():
        return shipped
    repo = PACKAGE_DIR.parent
    if (repo / "backend" / "protocol.py").is_file():
        return repo
    raise ImportError(
        f"the MVP4D backend source is missing (looked in {shipped} and {repo}); reinstall the extension"
    )


def _backend_package() -> ModuleType:
    if _PRIVATE in sys.modules:
        return sys.modules[_PRIVATE]
    pkg_dir = backend_root() / "backend"
    spec = importlib.util.spec_from_file_location(_PRIVATE, pkg_dir / "__init__.py",
                                                  submodule_search_locations=[str(pkg_dir)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PRIVATE] = module
    spec.loader.exec_module(module)
    return module


def protocol() -> ModuleType:
    """``backend.protocol`` (pure Python): JobSpec, CameraSpec, Event, PRESETS, BUNDLE_TENSORS..."""
    _backend_package()
    return importlib.import_module(f"{_PRIVATE}.protocol")


def errors() -> ModuleType:
    """``backend.errors``: error codes and their default hints."""
    _backend_package()
    return importlib.import_module(f"{_PRIVATE}.errors")


def estimates() -> ModuleType:
    """``backend.estimates`` (torch-free): the generators' GPU memory and time estimates."""
    _backend_package()
    return importlib.import_module(f"{_PRIVATE}.estimates")


def unload() -> None:
    """Forget the private backend modules (on unregister, so a reinstalled add-on gets fresh ones)."""
    for name in [n for n in sys.modules if n == _PRIVATE or n.startswith(_PRIVATE + ".")]:
        del sys.modules[name]
