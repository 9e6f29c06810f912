"""The extension zip: Blender's own validation, install + enable, and a clean unregister."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import bpy

from .conftest import ADDON, REPO


def _blender_ext() -> Path:
    path = Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    assert path.is_file(), "blender_ext.py not found inside the bpy wheel"
    return path


def test_zip_passes_blenders_validation(addon_zip):
    out = subprocess.run([sys.executable, str(_blender_ext()), "validate", str(addon_zip)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success" in out.stdout


def test_zip_layout(addon_zip):
    names = set(zipfile.ZipFile(addon_zip).namelist())
    assert "mvp4d_blender/blender_manifest.toml" in names
    assert "mvp4d_blender/__init__.py" in names
    assert "mvp4d_blender/backend_src/backend/protocol.py" in names
    # the contract's definitions, which protocol.py gathers, ship with it
    for part in ("__init__", "presets", "validation", "jobspec", "event_schema", "file_formats"):
        assert f"mvp4d_blender/backend_src/backend/contract/{part}.py" in names
    assert "mvp4d_blender/backend_src/pyproject.toml" in names
    # the generators' memory/time estimator the panel asks, with the torch-free modules it reads
    for part in ("estimates", "mmvdm/plan", "cameras/rings"):
        assert f"mvp4d_blender/backend_src/backend/{part}.py" in names
    assert any(n.startswith("mvp4d_blender/wheels/safetensors-") for n in names)
    assert not any("__pycache__" in n for n in names)
    import tomllib

    manifest = tomllib.loads(zipfile.ZipFile(addon_zip).read("mvp4d_blender/blender_manifest.toml").decode())
    assert manifest["id"] == "mvp4d" and manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    assert len(manifest["tagline"]) <= 64 and "files" in manifest["permissions"]
    for w in manifest["wheels"]:
        assert f"mvp4d_blender/{w[2:]}" in names


def test_installed_and_enabled(addon):
    assert ADDON in bpy.context.preferences.addons
    assert Path(addon.__file__).parent.name == "mvp4d"
    assert hasattr(bpy.types.Scene, "mvp4d")
    for op in ("generate_avatar", "import_avatar", "export_avatar", "add_rig", "add_camera_ring", "fit_rig"):
        assert hasattr(bpy.ops.mvp4d, op)
    # the wheel was unpacked by Blender into the extensions' site-packages
    local = Path(bpy.utils.user_resource("EXTENSIONS")) / ".local"
    assert list(local.rglob("safetensors/__init__.py")), "Blender did not install the safetensors wheel"
    # the contract comes from the shipped backend copy, privately named
    from importlib import import_module

    link = import_module(f"{ADDON}.backend_link")
    assert "backend_src" in str(link.backend_root())
    assert link.protocol().SCHEMA_VERSION >= 1
    assert link.protocol().JobSpec.__module__ == f"{ADDON}._backend.contract.jobspec"
    est = link.estimates()
    assert est.__name__ == f"{ADDON}._backend.estimates"
    assert est.ui_estimate("mmvdm", "360", "LOW")["peak_gib"] < est.ui_estimate("mmvdm", "360", "HIGH")["peak_gib"]
    assert "torch" not in sys.modules  # the add-on never imports the ML stack


def test_unregister_leaves_nothing_behind(addon):
    mod_names = [n for n in sys.modules if n.startswith(ADDON)]
    assert mod_names
    import addon_utils

    addon_utils.disable(ADDON, default_set=True)
    try:
        assert not [n for n in dir(bpy.ops.mvp4d) if not n.startswith("_")]
        assert not [n for n in dir(bpy.types) if n.startswith("MVP4D_")]
        assert not hasattr(bpy.types.Scene, "mvp4d")
        assert not [h for h in bpy.app.handlers.load_post if "mvp4d" in getattr(h, "__module__", "")]
        assert not any(n.endswith("._backend") or "._backend." in n for n in sys.modules if n.startswith(ADDON))
    finally:
        addon_utils.enable(ADDON, default_set=True)
    assert hasattr(bpy.ops.mvp4d, "generate_avatar") and hasattr(bpy.types.Scene, "mvp4d")
    from .conftest import BACKEND_PYTHON, set_backend

    set_backend(str(BACKEND_PYTHON))


def test_source_tree_has_no_build_leftovers():
    assert not (REPO / "mvp4d_blender" / "backend_src").exists()
