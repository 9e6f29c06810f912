"""Blender tests: real Blender through the ``bpy`` 4.5 wheel in ``.venv-blender`` (``make test``).

Before ``bpy`` is imported, ``BLENDER_USER_RESOURCES``/``BLENDER_USER_CONFIG`` point at a temporary
profile, so the extension is installed into a throw-away Blender, never the user's. The session builds
the extension zip with ``build_addon.py``, installs and enables it like a user would
(``extensions.package_install_files``), and points its preferences at the backend's interpreter
``.venv/bin/python`` exactly as an artist would. Under any other interpreter (the backend's pytest run)
nothing here is collected.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BACKEND_PYTHON = REPO / ".venv" / "bin" / "python"
_PROFILE = Path(tempfile.mkdtemp(prefix="mvp4d-blender-profile-"))
os.environ["BLENDER_USER_RESOURCES"] = str(_PROFILE)
os.environ["BLENDER_USER_CONFIG"] = str(_PROFILE / "config")
os.environ["BLENDER_USER_SCRIPTS"] = str(_PROFILE / "scripts")

try:
    import bpy  # noqa: F401
except ImportError:  # the backend's interpreter: these tests belong to .venv-blender
    collect_ignore_glob = ["test_*.py"]
    bpy = None

ADDON = "bl_ext.user_default.mvp4d"


def backend_run(code: str, *args: str, timeout: float = 300) -> str:
    """Run Python ``code`` with the backend interpreter (torch side); returns stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLENDER_")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([str(BACKEND_PYTHON), "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                         env=env, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"backend helper failed:\n{out.stderr[-3000:]}")
    return out.stdout


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory) -> Path:
    given = os.environ.get("MVP4D_ADDON_ZIP")
    if given:
        return Path(given)
    sys.path.insert(0, str(REPO))
    import build_addon

    return build_addon.build(tmp_path_factory.mktemp("dist"), str(BACKEND_PYTHON))


@pytest.fixture(scope="session")
def addon(addon_zip):
    """The installed, enabled extension module, with preferences pointing at the backend interpreter."""
    assert BACKEND_PYTHON.is_file(), "run `make install` first: the backend's .venv is missing"
    res = bpy.ops.extensions.package_install_files(repo="user_default", filepath=str(addon_zip),
                                                    enable_on_install=True)
    assert res == {"FINISHED"}
    mod = sys.modules[ADDON]
    set_backend(str(BACKEND_PYTHON))
    yield mod


def prefs():
    return bpy.context.preferences.addons[ADDON].preferences


def set_backend(python: str) -> None:
    p = prefs()
    p.backend_mode, p.python_path, p.hang_timeout_s = "EXISTING", python, 600


@pytest.fixture
def scene(addon):
    """A fresh empty scene (the add-on stays enabled, preferences keep the backend)."""
    bpy.ops.wm.read_homefile(use_empty=True)
    set_backend(str(BACKEND_PYTHON))
    yield bpy.context.scene


@pytest.fixture(scope="session")
def astronaut(tmp_path_factory) -> Path:
    """The embedded default's reference photo (scikit-image's astronaut, via the backend)."""
    p = tmp_path_factory.mktemp("img") / "astronaut.png"
    backend_run("import sys; from backend.tracking.image import default_reference_image, save_png_atomic;"
                "save_png_atomic(sys.argv[1], default_reference_image())", str(p))
    return p


@pytest.fixture(scope="session")
def corpus_job(addon, astronaut, tmp_path_factory) -> Path:
    """One real job on the embedded default (toy head, astronaut, projection, tiny), run to the corpus."""
    bpy.ops.wm.read_homefile(use_empty=True)
    set_backend(str(BACKEND_PYTHON))
    bpy.ops.mvp4d.add_rig(source="TOY")
    job = tmp_path_factory.mktemp("jobs") / "tiny"
    res = bpy.ops.mvp4d.generate_avatar(image=str(astronaut), preset="tiny", generator="projection",
                                        output_dir=str(job), wait=True, stop_after="corpus")
    assert res == {"FINISHED"}, bpy.context.scene.mvp4d.last_error
    m = bpy.context.scene.mvp4d
    (job / "scene_status.json").write_text(json.dumps(
        {"status": m.status, "progress": m.progress, "last_error": m.last_error, "preview_path": m.preview_path,
         "stage": m.stage}))
    return job


@pytest.fixture(scope="session")
def toy_bundle(corpus_job) -> Path:
    """A bundle bound to the toy head, coloured from the job's tracked photo (tests/backend_fixtures.py)."""
    out = corpus_job / "outputs" / "test_bundle.safetensors"
    if not out.is_file():
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLENDER_")}
        env["PYTHONPATH"] = str(REPO)
        subprocess.run([str(BACKEND_PYTHON), "-m", "tests.backend_fixtures", "toy-bundle", str(out), "--job",
                        str(corpus_job)], check=True, env=env, capture_output=True)
    return out


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_PROFILE, ignore_errors=True)
