"""Sidebar, preferences (Check, Install backend) and Fit rig to reference."""

from __future__ import annotations

import json
import time
from importlib import import_module

import bpy
import numpy as np
import pytest

from .conftest import ADDON, BACKEND_PYTHON, backend_run, prefs, set_backend


def test_sidebar_tab_in_order(addon):
    order = ["Reference", "FLAME rig", "Camera ring", "Animation", "Generate", "Avatar"]
    panels = [c for c in bpy.types.Panel.__subclasses__() if c.__name__.startswith("MVP4D_PT_")]
    assert sorted(panels, key=lambda c: c.bl_order) and [c.bl_label for c in sorted(panels, key=lambda c: c.bl_order)] \
        == order
    assert {(c.bl_space_type, c.bl_region_type, c.bl_category) for c in panels} == {("VIEW_3D", "UI", "MVP4D")}


def test_disabled_buttons_say_why(scene, astronaut, tmp_path):
    panels = import_module(f"{ADDON}.blender.panels")
    ctx = bpy.context
    assert "reference image" in panels.generate_blocker(ctx)
    scene.mvp4d.image = bpy.data.images.load(str(astronaut))
    assert "FLAME rig" in panels.generate_blocker(ctx)
    bpy.ops.mvp4d.add_rig(source="TOY")
    coll = bpy.data.collections.new("ring")
    scene.collection.children.link(coll)
    scene.mvp4d.cameras = coll
    assert "empty" in panels.generate_blocker(ctx)
    scene.mvp4d.cameras = None
    prefs().python_path = str(tmp_path / "missing")
    try:
        assert "No backend" in panels.generate_blocker(ctx)
    finally:
        prefs().python_path = str(BACKEND_PYTHON)
    assert panels.generate_blocker(ctx) is None
    scene.mvp4d.generator = "mmvdm"
    assert "weights" in panels.generate_blocker(ctx)
    assert "GiB" in import_module(f"{ADDON}.io.estimates").describe("mmvdm", "120", "LOW")
    assert not bpy.ops.mvp4d.cancel_job.poll()  # nothing is running


def test_check_runs_backend_doctor(scene):
    assert bpy.ops.mvp4d.check_backend(wait=True) == {"FINISHED"}
    items = {it.label: it for it in prefs().check_items}
    assert items["Python"].ok and items["torch"].ok and items["Flame"].ok
    prefs().python_path = "/nonexistent/python"
    try:
        bpy.ops.mvp4d.check_backend(wait=True)
        bad = list(prefs().check_items)
        assert len(bad) == 1 and not bad[0].ok and "Install backend" in bad[0].fix
    finally:
        prefs().python_path = str(BACKEND_PYTHON)


def test_install_backend_checks_the_interpreter_first(addon, tmp_path):
    """A Python the backend does not support is refused before anything is created or downloaded."""
    inst = import_module(f"{ADDON}.io.installer")
    link = import_module(f"{ADDON}.backend_link")
    low, high = inst.supported_python(link.backend_root())
    assert (low, high) == ((3, 11), (3, 12))  # pyproject.toml's requires-python
    wrong = tmp_path / "python3.13"  # stands in for Blender 5.x's own Python
    wrong.write_text("#!/bin/sh\necho 3 13\n")
    wrong.chmod(0o755)
    env = tmp_path / "env"
    with pytest.raises(inst.InterpreterError, match=r"is Python 3\.13; the backend needs Python 3\.11.*Install"):
        inst.Installer(env_dir=env, base_python=str(wrong), backend_root=link.backend_root()).start()
    assert not env.exists()
    with pytest.raises(inst.InterpreterError, match="cannot be run"):
        inst.choose_base_python(link.backend_root(), str(tmp_path / "no-python"))
    found, version = inst.choose_base_python(link.backend_root())  # 3.11 is on this machine (the backend's)
    assert version == (3, 11) and inst.python_version(found) == (3, 11)
    prefs().backend_mode, prefs().env_dir = "MANAGED", str(env)
    assert import_module(f"{ADDON}.blender.common").backend_python() == ""  # nothing installed: no backend
    set_backend(str(BACKEND_PYTHON))
    prefs().env_dir = ""


def test_install_backend_is_resumable_and_reports_failures(addon, tmp_path):
    inst = import_module(f"{ADDON}.io.installer")
    link = import_module(f"{ADDON}.backend_link")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    base = str(BACKEND_PYTHON.resolve())  # a supported (3.11) interpreter, whichever Blender runs the test
    steps = inst.plan(tmp_path / "env", base, link.backend_root(), str(wheels))
    assert [s.name for s in steps][:2] == ["Create environment", "Install torch"]
    assert all("--no-index" in s.argv for s in steps if "pip" in s.argv)
    job = inst.Installer(env_dir=tmp_path / "env", base_python=base, backend_root=link.backend_root(),
                         wheel_dir=str(wheels)).start()
    job.thread.join(timeout=120)
    assert job.finished and "Install torch" in job.error and "install.log" in job.error
    assert inst.env_python(tmp_path / "env").is_file()
    assert not inst.is_installed(tmp_path / "env")  # a failed install is never passed off as working
    again = inst.Installer(env_dir=tmp_path / "env", base_python=base, backend_root=link.backend_root(),
                           wheel_dir=str(wheels)).start()
    again.thread.join(timeout=120)
    msgs = []
    while not again.messages.empty():
        msgs.append(again.messages.get())
    assert any(m and "Create environment: already done" in m[2] for m in msgs)


def test_fit_rig_to_reference_then_generate_uses_it(scene, astronaut, tmp_path):
    bpy.ops.mvp4d.add_rig(source="TOY")
    rig = scene.mvp4d.rig
    scene.mvp4d.image = bpy.data.images.load(str(astronaut))
    t0 = time.monotonic()
    assert bpy.ops.mvp4d.fit_rig(wait=True) == {"FINISHED"}, scene.mvp4d.last_error
    assert rig["mvp4d_fitted"] and rig["mvp4d_reference_camera"].type == "CAMERA"
    cam = rig["mvp4d_reference_camera"]
    assert (cam["mvp4d_width"], cam["mvp4d_height"]) == (512, 512)
    assert np.abs(np.asarray(rig["mvp4d_shape"])).max() > 0  # the identity was fitted
    # a ring added now sits at the photo's camera distance, like the backend's preset rings
    assert bpy.ops.mvp4d.add_camera_ring(preset="tiny") == {"FINISHED"}
    camops = import_module(f"{ADDON}.blender.camera_objects")
    ref = camops.read_camera(cam, camops.rig_frame(rig), 512, 512)
    ring = camops.read_camera(camops.collection_cameras(scene.mvp4d.cameras)[0], camops.rig_frame(rig), 64, 64)
    centre = lambda c: -c.world_to_cam[:3, :3].T @ c.world_to_cam[:3, 3]  # noqa: E731
    assert abs(np.linalg.norm(centre(ring)) - np.linalg.norm(centre(ref))) < 0.05
    # the fitted pose goes to the backend instead of tracking again
    job = tmp_path / "job"
    res = bpy.ops.mvp4d.generate_avatar(output_dir=str(job), preset="tiny", wait=True, stop_after="track")
    assert res == {"FINISHED"}, scene.mvp4d.last_error
    spec = json.loads((job / "job.json").read_text())
    assert spec["inputs"]["flame_params"] == "inputs/flame_params.npz"
    assert spec["inputs"]["reference_camera"]["width"] == 512
    events = (job / "events.jsonl").read_text()
    assert "landmark error" not in events  # no tracking ran: the rig's parameters were used
    assert time.monotonic() - t0 < 120


class _Layout:
    """Stands in for a UI layout in background mode; checks every property a panel draws exists and
    records what it drew in ``drawn`` (``("label", text)``, ``("prop", name)``, ``("operator", idname)``)."""

    def __init__(self, drawn: list[tuple[str, str]] | None = None):
        self.drawn = [] if drawn is None else drawn

    def __getattr__(self, name):
        return lambda *a, **k: _Layout(self.drawn)

    def label(self, text="", **_kw):
        self.drawn.append(("label", text))
        return _Layout(self.drawn)

    def prop(self, data, name, **_kw):
        if name.startswith('["'):
            assert name[2:-2] in data.keys(), name
        else:
            assert name in data.bl_rna.properties, f"{type(data).__name__}.{name}"
        self.drawn.append(("prop", name))
        return _Layout(self.drawn)

    def operator(self, idname, **_kw):
        mod, op = idname.split(".")
        assert hasattr(getattr(bpy.ops, mod), op), idname
        self.drawn.append(("operator", idname))
        return _Layout(self.drawn)


def _draw_panels() -> dict[str, list[tuple[str, str]]]:
    drawn: dict[str, list[tuple[str, str]]] = {}
    for cls in [c for c in bpy.types.Panel.__subclasses__() if c.__name__.startswith("MVP4D_PT_")]:
        layout = _Layout()
        cls.draw(type("P", (), {"layout": layout})(), bpy.context)
        drawn[cls.__name__] = layout.drawn
    return drawn


def test_panels_draw_what_the_scene_holds(scene, astronaut, toy_bundle):
    empty = _draw_panels()
    everything = [d for items in empty.values() for d in items]
    assert ("operator", "mvp4d.add_rig") in everything and ("operator", "mvp4d.generate_avatar") in everything
    assert ("operator", "mvp4d.resume_job") not in everything  # nothing failed yet
    assert any(k == "label" and "Select an imported avatar" in t for k, t in everything)

    scene.mvp4d.image = bpy.data.images.load(str(astronaut))
    bpy.ops.mvp4d.add_rig(source="TOY")
    bpy.ops.mvp4d.add_camera_ring(preset="tiny")
    bpy.ops.mvp4d.import_avatar(filepath=str(toy_bundle))
    bpy.context.view_layer.objects.active = scene.mvp4d.last_avatar
    scene.mvp4d.status, scene.mvp4d.last_error, scene.mvp4d.last_hint = "FAILED", "[X] it broke", "Do this."
    full = [d for items in _draw_panels().values() for d in items]
    labels = [t for k, t in full if k == "label"]
    assert "[X] it broke" in labels and "Do this." in labels  # the failure and its hint are shown
    assert any(t.startswith("Status: Failed") for t in labels)
    assert ("operator", "mvp4d.resume_job") in full
    assert any("expressions" in t for t in labels)  # the rig's summary
    assert any(t.endswith("key views") and not t.startswith("0 ") for t in labels)  # the ring's summary
    assert scene.mvp4d.last_avatar.name in labels  # the selected avatar's box


def test_preferences_draw_each_backend_mode():
    class Prefs:
        def __init__(self):
            self.layout = _Layout()

        def __getattr__(self, name):
            return getattr(prefs(), name)

    drawn = {}
    for mode in ("MANAGED", "EXISTING"):
        prefs().backend_mode = mode
        p = Prefs()
        type(prefs()).draw(p, bpy.context)
        drawn[mode] = {name for kind, name in p.layout.drawn if kind == "prop"}
    prefs().backend_mode = "EXISTING"
    assert "python_path" in drawn["EXISTING"] and "python_path" not in drawn["MANAGED"]
    assert {"flame_model", "weights_dir", "device", "vram_preset"} <= drawn["MANAGED"] & drawn["EXISTING"]


def test_cap4d_choice_shows_licence_needs_weights_and_real_flame(scene, astronaut, tmp_path):
    panels = import_module(f"{ADDON}.blender.panels")
    prefs_mod = import_module(f"{ADDON}.blender.prefs")
    jobspec = import_module(f"{ADDON}.blender.jobspec")
    estimates = import_module(f"{ADDON}.io.estimates")
    scene.mvp4d.image = bpy.data.images.load(str(astronaut))
    bpy.ops.mvp4d.add_rig(source="TOY")
    scene.mvp4d.generator = "cap4d"
    assert "CAP4D needs its weights" in panels.generate_blocker(bpy.context)
    prefs().cap4d_weights = str(tmp_path / "cap4d")
    try:
        assert "real FLAME" in panels.generate_blocker(bpy.context)
        with pytest.raises(jobspec.InputError) as e:
            jobspec.build_spec(scene, scene.mvp4d.rig, None, generator="cap4d", preset="tiny", seed=0,
                               animation="BUILTIN", frame_start=1, frame_end=2)
        assert "FLAME" in str(e.value)
        assert prefs_mod.generator_weights(prefs(), "cap4d") == str(tmp_path / "cap4d")
    finally:
        prefs().cap4d_weights = ""
    text = " ".join(prefs_mod.cap4d_licence_lines())
    assert "CC BY-NC 4.0" in text and "not for commercial use" in text
    d = estimates.describe("cap4d", "360", "MEDIUM")
    assert "GiB" in d and "min sampling" in d


def test_generate_panel_shows_the_generators_own_estimate(addon):
    """The panel's memory line carries the numbers the backend's generators check before loading
    (computed here by the torch side: CAP4D's ``estimate_vram`` and the MMVDM generator's ``estimate``)."""
    code = (
        "import json, torch; from types import SimpleNamespace as N\n"
        "from backend.generators.cap4d import CAP4DSettings, estimate_vram\n"
        "from backend.generators.mmvdm import MMVDMGenerator, MMVDMSettings\n"
        "from backend.mmvdm.configs import mmvdm_2b_config\n"
        "from backend.mmvdm.plan import build_plan\n"
        "from backend.cameras.rings import ring_preset\n"
        "cuda, out = torch.device('cuda'), {}\n"
        "for v in ('low', 'medium', 'high'):\n"
        "    s = CAP4DSettings.from_spec(N(vram=v, seed=0, quality=None, dtype='auto', device=None, vae_tiling=None,"
        " offload=None), '360')\n"
        "    out['cap4d', v] = estimate_vram(s, cuda)['peak'] / 2**30\n"
        "    g = MMVDMGenerator(settings=MMVDMSettings.from_spec(N(vram=v)),"
        " components=N(transformer=N(config=mmvdm_2b_config())))\n"
        "    ring = ring_preset('120'); plan = build_plan(ring, 89)\n"
        "    out['mmvdm', v] = g.estimate(g.settings, g._stage_shapes(plan, ring, 512), cuda)['peak'] / 2**30\n"
        "print(json.dumps({f'{k[0]} {k[1]}': x for k, x in out.items()}))\n")
    backend = json.loads(backend_run(code))
    estimates = import_module(f"{ADDON}.io.estimates")
    for key, gib in backend.items():
        generator, vram = key.split()
        text = estimates.describe(generator, "360" if generator == "cap4d" else "120", vram.upper())
        assert text.startswith(f"~{gib:.1f} GiB peak (GPU, {vram} VRAM mode)"), (key, text)
    assert len({round(g, 1) for g in backend.values()}) >= 4  # the modes differ, so a wrong mode would show
    assert "GPU or the CPU" in estimates.describe("projection", "120", "HIGH")


def test_no_placeholder_values_in_redo_panels(addon):
    """Operator arguments a user sees in the redo panel hold real values; unset means "the scene's"."""
    for name in dir(bpy.ops.mvp4d):
        rna = getattr(bpy.ops.mvp4d, name).get_rna_type()
        for prop in rna.properties:
            if prop.type in ("INT", "FLOAT") and not getattr(prop, "is_array", False):
                assert prop.default not in (-1, -1000, -1000000), f"mvp4d.{name}.{prop.identifier}"


def test_unset_ring_arguments_use_the_scene_and_distance_zero_is_auto(scene):
    bpy.ops.mvp4d.add_rig(source="TOY")
    m = scene.mvp4d
    m.ring_preset, m.ring_count, m.ring_distance = "custom", 5, 0.0
    assert "auto" in m.bl_rna.properties["ring_distance"].name
    assert bpy.ops.mvp4d.add_camera_ring() == {"FINISHED"}
    camops = import_module(f"{ADDON}.blender.camera_objects")
    assert len(camops.collection_cameras(m.cameras)) == 5
    assert bpy.ops.mvp4d.add_camera_ring(count=3) == {"FINISHED"}
    assert len(camops.collection_cameras(m.cameras)) == 3


def test_a_failed_export_names_the_chosen_file(scene, toy_bundle, tmp_path):
    bpy.ops.mvp4d.add_rig(source="TOY")
    bpy.ops.mvp4d.import_avatar(filepath=str(toy_bundle))
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "avatar.ply"  # its folder is a file: the write fails
    with pytest.raises(RuntimeError, match=f"Export to {target} failed"):
        bpy.ops.mvp4d.export_avatar(format="PLY", filepath=str(target))


def test_unexpected_finisher_errors_are_internal_with_a_log(addon, tmp_path):
    runtime = import_module(f"{ADDON}.blender.runtime")
    avatar = import_module(f"{ADDON}.blender.avatar")
    err = runtime.finisher_error(KeyError("splat_color"), tmp_path)
    log = tmp_path / "blender_error.log"
    assert err.code == "INTERNAL" and str(log) in err.hint and "KeyError" in log.read_text()
    user = runtime.finisher_error(avatar.AvatarImportError("the rig has another topology"), tmp_path)
    assert user.code == "BAD_INPUT" and "topology" in user.message


def test_vram_texts_say_what_the_backend_does(addon):
    est = import_module(f"{ADDON}.backend_link").estimates()  # the generators' own presets (they import them)
    presets = {"m": est.MMVDM_VRAM, "c": est.CAP4D_VRAM}
    items = {i.identifier: i.description for i in type(prefs()).bl_rna.properties["vram_preset"].enum_items}
    assert set(items) == {"LOW", "MEDIUM", "HIGH"}
    for mode, text in items.items():
        m, c = presets["m"][mode.lower()], presets["c"][mode.lower()]
        assert ("VAE tiled" in text) == (m["vae_tiling"] or c["vae_tiling"]), mode
        assert ("weights offloaded" in text) == (m["offload"] != "none"), mode
        assert ("CFG passes batched" in text) == (m["cfg_passes"] == "batched"), mode
        assert ("CFG passes one after another" in text) == (m["cfg_passes"] == "sequential" and not m["vae_tiling"])
        assert ("CFG halves in separate calls" in text) == (not c["cfg_batched"]), mode
        if mode != "LOW":  # LOW's CAP4D text names its CFG split instead (one group, as in MEDIUM)
            assert {1: "one view group", 4: "four view groups"}[c["groups_per_batch"]] in text, mode


def test_fit_rig_is_reachable_from_the_object_menus(scene, astronaut):
    """Fit rig to reference: in the Object menu and the right-click menu, and in the Reference panel,
    enabled once a photo and a rig are set (disabled with the reason before)."""
    menu = getattr(bpy.types, "MVP4D_MT_object")
    ops = []

    class _Menu:
        def operator(self, idname, **_kw):
            mod, op = idname.split(".")
            assert hasattr(getattr(bpy.ops, mod), op), idname
            ops.append(idname)

    menu.draw(type("M", (), {"layout": _Menu()})(), bpy.context)
    assert "mvp4d.fit_rig" in ops and ops.index("mvp4d.add_rig") < ops.index("mvp4d.fit_rig")
    menus = import_module(f"{ADDON}.blender.menus")
    for parent in menus.PARENTS:  # appended to Blender's menus (draw functions of the menu type)
        assert menus._draw_submenu in getattr(bpy.types, parent)._dyn_ui_initialize()

    panel = next(c for c in bpy.types.Panel.__subclasses__() if c.__name__ == "MVP4D_PT_reference")

    def fit_button():
        rows, labels = [], []

        class _L:
            enabled = True

            def __getattr__(self, name):
                return lambda *a, **k: _L()

            def row(self, **_k):
                r = _L()
                rows.append(r)
                return r

            def operator(self, idname, **_k):
                self.op = idname
                return _L()

            def label(self, text="", **_k):
                labels.append(text)

        panel.draw(type("P", (), {"layout": _L()})(), bpy.context)
        row = next(r for r in rows if getattr(r, "op", "") == "mvp4d.fit_rig")
        return row.enabled, labels

    enabled, labels = fit_button()
    assert not enabled and "Pick a portrait photo first" in labels
    scene.mvp4d.image = bpy.data.images.load(str(astronaut))
    enabled, labels = fit_button()
    assert not enabled and "Add or pick a FLAME rig first" in labels
    bpy.ops.mvp4d.add_rig(source="TOY")
    enabled, labels = fit_button()
    assert enabled and not [t for t in labels if "first" in t]
