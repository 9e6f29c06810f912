"""Preferences: where the backend lives (managed or existing), FLAME, weights, device, VRAM; Install; Check.

Laid out as a checklist an artist can follow top to bottom: backend environment (with a one-click
"Install backend"), resources, then "Check", which runs ``python -m backend doctor`` and lists what is
missing together with the fix the backend suggests.
"""

from __future__ import annotations

import json
import subprocess
import threading

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from ..io.installer import Installer, InterpreterError, choose_base_python, env_python, plan
from .. import backend_link
from . import common

_installer: Installer | None = None
_check: dict = {"thread": None, "result": None}


def cap4d_licence_lines(width: int = 70) -> list[str]:
    """The CAP4D licence (protocol.CAP4D_LICENCE) wrapped for labels."""
    import textwrap

    return textwrap.wrap(backend_link.protocol().CAP4D_LICENCE, width)


def generator_weights(p, generator: str) -> str | None:
    """The weights path the preferences give for ``generator`` (None when unset or not needed)."""
    if p is None:
        return None
    path = {"mmvdm": p.weights_dir, "cap4d": p.cap4d_weights}.get(generator, "")
    return bpy.path.abspath(path) if path else None


class MVP4D_CheckItem(bpy.types.PropertyGroup):
    label: StringProperty()
    ok: BoolProperty()
    detail: StringProperty()
    fix: StringProperty()


class MVP4D_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = common.ADDON

    backend_mode: EnumProperty(name="Backend", items=[
        ("MANAGED", "Managed environment", "A Python environment this add-on creates and fills ('Install backend')"),
        ("EXISTING", "Existing Python", "A Python interpreter that already has the backend's packages (torch, ...)"),
    ], default="MANAGED")
    python_path: StringProperty(name="Backend Python", subtype="FILE_PATH",
                                description="Interpreter that runs 'python -m backend' (e.g. .venv/bin/python)")
    env_dir: StringProperty(name="Environment folder", subtype="DIR_PATH",
                            description="Where the managed environment lives (empty: the add-on's user folder)")
    base_python: StringProperty(name="Base Python", subtype="FILE_PATH",
                                description="Python 3.11 used to create the environment (empty: found on this "
                                            "computer; Blender's own when it is 3.11)")
    offline_wheels: StringProperty(name="Offline wheels", subtype="DIR_PATH",
                                   description="Install from this folder of wheels only (no network)")
    flame_model: StringProperty(name="FLAME model", subtype="FILE_PATH",
                                description="FLAME 2020/2023/2023 Open .pkl or .npz (empty: the embedded toy head)")
    weights_dir: StringProperty(name="MMVDM weights", subtype="DIR_PATH",
                                description="Folder with the MMVDM weights (empty: only the projection generator)")
    cap4d_weights: StringProperty(name="CAP4D weights", subtype="FILE_PATH",
                                  description="CAP4D folder made by 'python -m backend weights convert' (or the "
                                  "cap4d_mmdm_100k.ckpt itself). CC BY-NC 4.0 + OpenRAIL++: not for commercial use")
    device: EnumProperty(name="Device", items=[("AUTO", "Auto", "CUDA when available, else CPU"),
                                               ("CUDA", "CUDA", "NVIDIA GPU"), ("CPU", "CPU", "No GPU"),
                                               ("MPS", "Apple GPU", "Metal (macOS)")], default="AUTO")
    vram_preset: EnumProperty(name="VRAM", items=[
        # what backend/generators/{mmvdm,cap4d}.py do for generator.vram low/medium/high
        ("LOW", "Low", "VAE tiled; MMVDM: model weights offloaded to the CPU while unused; CAP4D: the two CFG "
                       "halves in separate calls (slowest, least memory)"),
        ("MEDIUM", "Medium", "MMVDM: CFG passes one after another; CAP4D: one view group per call; "
                             "no tiling, no offload"),
        ("HIGH", "High", "MMVDM: CFG passes batched; CAP4D: four view groups per call; no tiling, no offload "
                         "(fastest, most memory)")], default="MEDIUM")
    executor: EnumProperty(name="Executor", items=[
        ("LOCAL", "Local", "Run the sampling plan in the backend process (one GPU)"),
        ("RAY", "Ray", "Run the plan's independent units as Ray tasks on several GPUs or a cluster (needs ray)")],
        default="LOCAL")
    ray_address: StringProperty(name="Ray address", default="",
                                description="Empty: start Ray on this machine; 'auto' or HOST:PORT: join a cluster")
    gpus_per_unit: FloatProperty(name="GPUs per unit", default=1.0, min=0.0, soft_max=8.0,
                                 description="GPUs each unit of work asks Ray for (0: CPU)")
    hang_timeout_s: IntProperty(name="Hang timeout (s)", default=600, min=10, soft_max=7200,
                                description="Stop and report a backend that reports nothing for this long")
    install_progress: FloatProperty(subtype="PERCENTAGE", min=0, max=100)
    install_message: StringProperty()
    install_error: StringProperty()
    check_items: CollectionProperty(type=MVP4D_CheckItem)
    check_summary: StringProperty()

    def draw(self, context):
        layout = self.layout
        box = layout.box()
        box.label(text="1. Backend environment", icon="CONSOLE")
        box.prop(self, "backend_mode", expand=True)
        if self.backend_mode == "EXISTING":
            box.prop(self, "python_path")
        else:
            box.prop(self, "env_dir")
            box.prop(self, "base_python")
            box.prop(self, "offline_wheels")
            row = box.row()
            if _installer is not None and not _installer.finished:
                row.progress(factor=self.install_progress / 100.0, text=self.install_message[:80] or "Installing")
                row.operator("mvp4d.cancel_install", text="", icon="X")
            else:
                row.operator("mvp4d.install_backend", icon="IMPORT")
                if self.install_message:
                    box.label(text=self.install_message[:120])
            if self.install_error:
                col = box.column(align=True)
                col.alert = True
                col.label(text=self.install_error[:160], icon="ERROR")
            box.label(text=f"Interpreter: {env_python(common.managed_env_dir())}")
        box = layout.box()
        box.label(text="2. Resources", icon="FILE_FOLDER")
        box.prop(self, "flame_model")
        box.prop(self, "weights_dir")
        box.prop(self, "cap4d_weights")
        if self.cap4d_weights:
            for line in cap4d_licence_lines():
                box.label(text=line, icon="INFO" if line.startswith("CAP4D") else "BLANK1")
        row = box.row()
        row.prop(self, "device")
        row.prop(self, "vram_preset")
        box.prop(self, "hang_timeout_s")
        row = box.row()
        row.prop(self, "executor")
        if self.executor == "RAY":
            row.prop(self, "ray_address")
            row.prop(self, "gpus_per_unit")
        box = layout.box()
        box.label(text="3. Check", icon="CHECKMARK")
        row = box.row()
        row.operator("mvp4d.check_backend", icon="FILE_REFRESH")
        if self.check_summary:
            row.label(text=self.check_summary)
        for it in self.check_items:
            col = box.column(align=True)
            col.label(text=f"{it.label}: {it.detail}", icon="CHECKMARK" if it.ok else "ERROR")
            if not it.ok and it.fix:
                col.label(text=f"    Fix: {it.fix}")
        layout.label(text="Then: 3D Viewport > Sidebar (N) > MVP4D", icon="INFO")


def _drain_installer():
    p = common.prefs()
    if _installer is None or p is None:
        return None
    while not _installer.messages.empty():
        msg = _installer.messages.get_nowait()
        if msg is None:
            break
        done, total, text = msg
        p.install_progress, p.install_message = 100.0 * done / max(total, 1), text
    if _installer.finished:
        p.install_error = _installer.error
        if not _installer.error:
            p.install_message = "Backend installed. Click Check."
        common.tag_redraw()
        return None
    common.tag_redraw()
    return 0.5


class MVP4D_OT_install_backend(bpy.types.Operator):
    """Create the managed Python environment and install the backend into it (resumable)"""

    bl_idname = "mvp4d.install_backend"
    bl_label = "Install backend"

    def execute(self, context):
        global _installer
        p = common.prefs()
        if p is None:
            self.report({"ERROR"}, "Enable the MVP4D add-on first")
            return {"CANCELLED"}
        if _installer is not None and not _installer.finished:
            self.report({"WARNING"}, "The backend is already being installed")
            return {"CANCELLED"}
        named = bpy.path.abspath(p.base_python) if p.base_python else ""
        wheels = bpy.path.abspath(p.offline_wheels) if p.offline_wheels else ""
        try:  # the interpreter is checked before anything is created or downloaded
            base, _version = choose_base_python(common.backend_root(), named)
            _installer = Installer(env_dir=common.managed_env_dir(), base_python=base,
                                   backend_root=common.backend_root(), wheel_dir=wheels).start()
        except InterpreterError as e:
            p.install_error, p.install_message = str(e), ""
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        p.install_error, p.install_message, p.install_progress = "", "Starting...", 0.0
        bpy.app.timers.register(_drain_installer, first_interval=0.2)
        steps = plan(common.managed_env_dir(), base, common.backend_root(), wheels)
        self.report({"INFO"}, f"Installing the backend ({len(steps)} steps) into {common.managed_env_dir()}")
        return {"FINISHED"}


class MVP4D_OT_cancel_install(bpy.types.Operator):
    """Stop the running install (click Install backend again to continue it later)"""

    bl_idname = "mvp4d.cancel_install"
    bl_label = "Cancel install"

    def execute(self, context):
        if _installer is not None:
            _installer.cancel()
        return {"FINISHED"}


def run_doctor(python: str, flame: str = "", weights: str = "", timeout: float = 120.0) -> dict:
    """``python -m backend doctor`` as a dict; ``{"ok": False, "error": ...}`` when it cannot run."""
    import os

    if not python or not os.path.isfile(python):
        return {"ok": False, "error": f"backend Python '{python}' not found",
                "fix": "Set the backend Python (Existing) or click Install backend (Managed)."}
    argv = [python, "-m", "backend", "doctor"]
    if flame:
        argv += ["--flame", flame]
    if weights:
        argv += ["--weights", weights]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    env["PYTHONPATH"] = str(common.backend_root())
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        return json.loads(out.stdout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"doctor took longer than {timeout:.0f} s", "fix": "Try again."}
    except (OSError, ValueError) as e:
        return {"ok": False, "error": f"doctor could not run ({e})",
                "fix": "The interpreter lacks the backend's packages: Install backend or pick another Python."}


def fill_check(p, report: dict) -> None:
    """Turn a doctor report into the checklist shown in the preferences."""
    p.check_items.clear()

    def add(label, ok, detail, fix=""):
        it = p.check_items.add()
        it.label, it.ok, it.detail, it.fix = label, bool(ok), str(detail)[:200], str(fix or "")[:200]

    if "error" in report and "packages" not in report:
        add("Backend", False, report["error"], report.get("fix", ""))
    else:
        add("Python", True, report.get("python", "?"))
        for name, e in sorted(report.get("packages", {}).items()):
            if not e.get("ok") or e.get("required"):
                add(name, e.get("ok"), e.get("version") or e.get("error") or "missing", e.get("fix", ""))
        t = report.get("torch", {})
        add("Device", t.get("ok"), t.get("gpu") or t.get("device") or "?", t.get("fix") or t.get("note", ""))
        for key in ("flame", "weights"):
            e = report.get(key, {})
            add(key.capitalize(), e.get("ok"), e.get("model_id") or e.get("configured") or e.get("note") or "",
                e.get("fix", ""))
    p.check_summary = "All good" if report.get("ok") else "Something is missing (see below)"


def _drain_check():
    p = common.prefs()
    if _check["result"] is None:
        return 0.3
    if p is not None:
        fill_check(p, _check["result"])
    common.tag_redraw()
    return None


class MVP4D_OT_check_backend(bpy.types.Operator):
    """Run 'python -m backend doctor' and list what is missing, with the fix"""

    bl_idname = "mvp4d.check_backend"
    bl_label = "Check"
    wait: BoolProperty(default=False, options={"SKIP_SAVE"}, description="Block until the check is done")

    def execute(self, context):
        p = common.prefs()
        py = common.backend_python()
        flame = common.flame_source()
        weights = generator_weights(p, context.scene.mvp4d.generator) or ""
        if self.wait or bpy.app.background:
            report = run_doctor(py, "" if flame == "toy" else flame, weights)
            if p is not None:
                fill_check(p, report)
            (self.report({"INFO"}, "Backend OK") if report.get("ok") else
             self.report({"WARNING"}, f"Backend check: {report.get('error') or 'something is missing'}"))
            return {"FINISHED"}
        _check["result"] = None
        _check["thread"] = threading.Thread(target=lambda: _check.__setitem__(
            "result", run_doctor(py, "" if flame == "toy" else flame, weights)), daemon=True)
        _check["thread"].start()
        if p is not None:
            p.check_summary = "Checking..."
        bpy.app.timers.register(_drain_check, first_interval=0.3)
        return {"FINISHED"}


CLASSES = (MVP4D_CheckItem, MVP4D_AddonPreferences, MVP4D_OT_install_backend, MVP4D_OT_cancel_install,
           MVP4D_OT_check_backend)


def shutdown() -> None:
    if _installer is not None:
        _installer.cancel()
    for fn in (_drain_installer, _drain_check):
        if bpy.app.timers.is_registered(fn):
            bpy.app.timers.unregister(fn)
