"""Small shared helpers of the Blender side: the add-on's name, preferences, folders, redraws."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import bpy

from .. import backend_link

#: the add-on's package: ``bl_ext.<repo>.mvp4d`` when installed as an extension
ADDON = __package__.rpartition(".")[0]


def prefs():
    """The add-on preferences, or None when the add-on is not enabled through Blender (bare import)."""
    addon = bpy.context.preferences.addons.get(ADDON)
    return addon.preferences if addon is not None else None


def user_dir(*parts: str) -> Path:
    """A writable folder for the add-on's data that survives upgrades (never the add-on folder)."""
    try:
        base = Path(bpy.utils.extension_path_user(ADDON, path="", create=True))
    except (ValueError, AttributeError):  # not installed as an extension (source checkout)
        base = Path(os.environ.get("MVP4D_USER_DIR", Path(tempfile.gettempdir()) / "mvp4d_user"))
    p = base.joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


def backend_python() -> str:
    """The interpreter that runs ``python -m backend``, as configured in the preferences."""
    p = prefs()
    if p is None:
        return os.environ.get("MVP4D_BACKEND_PYTHON", "")
    if p.backend_mode == "EXISTING":
        return bpy.path.abspath(p.python_path) if p.python_path else ""
    from ..io.installer import env_python, is_installed

    # a managed environment counts only once every install step (its final check included) finished
    return str(env_python(managed_env_dir())) if is_installed(managed_env_dir()) else ""


def managed_env_dir() -> Path:
    p = prefs()
    if p is not None and p.env_dir:
        return Path(bpy.path.abspath(p.env_dir))
    return user_dir("backend-env")


def executor_args() -> list[str]:
    """``run`` options for the executor chosen in the preferences (Ray: ``--executor ray`` ...); none for
    Local, so a job keeps the executor its job.json names (results never depend on it)."""
    p = prefs()
    if p is None or getattr(p, "executor", "LOCAL") != "RAY":
        return []
    args = ["--executor", "ray", "--gpus-per-unit", f"{float(p.gpus_per_unit):g}"]
    if p.ray_address.strip():
        args += ["--ray-address", p.ray_address.strip()]
    return args


def backend_env() -> dict[str, str]:
    """Settings the backend's tools read from the environment (``doctor``: FLAME file, weights).

    Device and VRAM preset travel in ``job.json`` (``generator.device``/``generator.vram``)."""
    p = prefs()
    env: dict[str, str] = {}
    if p is None:
        return env
    if p.flame_model:
        env["MVP4D_FLAME"] = bpy.path.abspath(p.flame_model)
    if p.weights_dir:
        env["MVP4D_WEIGHTS"] = bpy.path.abspath(p.weights_dir)
    return env


def hang_timeout() -> float:
    p = prefs()
    return float(p.hang_timeout_s) if p is not None else 600.0


def flame_source() -> str:
    """``toy`` or the absolute path of the configured FLAME file."""
    p = prefs()
    if p is not None and p.flame_model:
        return str(Path(bpy.path.abspath(p.flame_model)).resolve())
    return "toy"


def backend_root() -> Path:
    return backend_link.backend_root()


def tag_redraw() -> None:
    wm = bpy.context.window_manager
    for win in getattr(wm, "windows", []):
        for area in win.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()
