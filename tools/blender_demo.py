"""The main job on the embedded default, end to end in Blender (the end of ``make demo``).

Run with Blender's Python:  ``.venv-blender/bin/python tools/blender_demo.py [--out out/demo/blender]
[--avatar BUNDLE]``

Builds the extension zip, installs it into a Blender profile kept inside ``out/`` (never the user's),
points it at the backend's ``.venv/bin/python``, adds the toy FLAME rig and a camera ring, then either
runs ``generate_avatar(wait=True)`` on the astronaut photo (the add-on starts the backend, follows its
events and imports the result: ``make demo-blender``) or, with ``--avatar``, imports a bundle the
backend already made (``make demo``: the backend's own avatar, not fitted a second time), and leaves a
``.blend``, a 256^2 Cycles render, a ``.glb`` and a ``.ply`` in the output folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _quiet_stdout():
    """Send what C code prints to file descriptor 1 to /dev/null for a while (Python's own prints too)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "out" / "demo" / "blender"))
    ap.add_argument("--preset", default="preview", choices=["tiny", "preview", "120", "360"])
    ap.add_argument("--backend-python", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--avatar", default=None,
                    help="import this avatar bundle (e.g. out/demo/outputs/avatar.safetensors) instead of generating one")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    profile = ROOT / "out" / "blender-profile"
    os.environ["BLENDER_USER_RESOURCES"] = str(profile)
    os.environ["BLENDER_USER_CONFIG"] = str(profile / "config")
    os.environ["BLENDER_USER_SCRIPTS"] = str(profile / "scripts")
    import bpy  # after the profile is set

    sys.path.insert(0, str(ROOT))
    import build_addon

    backend_env = {**{k: v for k, v in os.environ.items() if not k.startswith("BLENDER_")}, "PYTHONPATH": str(ROOT)}
    zip_path = build_addon.build(ROOT / "out" / "dist", args.backend_python)
    assert bpy.ops.extensions.package_install_files(repo="user_default", filepath=str(zip_path),
                                                    enable_on_install=True, overwrite=True) == {"FINISHED"}
    addon = "bl_ext.user_default.mvp4d"
    bpy.ops.wm.read_homefile(use_empty=True)
    prefs = bpy.context.preferences.addons[addon].preferences
    prefs.backend_mode, prefs.python_path = "EXISTING", args.backend_python
    image = out / "astronaut.png"
    subprocess.run([args.backend_python, "-c", "import sys; from backend.tracking.image import "
                    "default_reference_image, save_png_atomic; save_png_atomic(sys.argv[1], default_reference_image())",
                    str(image)], check=True, env=backend_env)
    scene = bpy.context.scene
    scene.mvp4d.image = bpy.data.images.load(str(image))
    bpy.ops.mvp4d.add_rig(source="TOY")
    bpy.ops.mvp4d.add_camera_ring(preset=args.preset)
    if args.avatar:
        res = bpy.ops.mvp4d.import_avatar(filepath=str(Path(args.avatar).resolve()))
        print(f"import_avatar({args.avatar}): {res}")
        if res != {"FINISHED"}:
            return 1
    else:
        job = out / "job"
        res = bpy.ops.mvp4d.generate_avatar(preset=args.preset, output_dir=str(job), wait=True)
        print(f"generate_avatar: {res} {scene.mvp4d.last_error}")
        if res != {"FINISHED"}:
            return 1
    if scene.mvp4d.last_avatar is None:
        print(f"no avatar was imported: {scene.mvp4d.last_error}")
        return 1
    avatar = scene.mvp4d.last_avatar
    cam = bpy.data.objects.new("Demo camera", bpy.data.cameras.new("Demo camera"))
    scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler, cam.data.lens = (0.0, -0.75, 0.0), (1.5707963, 0.0, 0.0), 50
    scene.camera = cam
    # the add-on's render set-up (like the backend's renderer): Cycles, bundle frame 0, 256^2
    with _quiet_stdout():  # Cycles prints a status line per step; the demo's account stays short
        bpy.ops.mvp4d.render_avatar(camera=cam.name, frame=0, resolution=256, engine="CYCLES",
                                    filepath=str(out / "render.png"), avatar=avatar.name)
    bpy.ops.mvp4d.export_avatar(format="GLB", filepath=str(out / "avatar.glb"), avatar=avatar.name)
    bpy.ops.mvp4d.export_avatar(format="PLY", filepath=str(out / "avatar.ply"), avatar=avatar.name)
    bpy.ops.wm.save_as_mainfile(filepath=str(out / "avatar.blend"))
    print("\nMVP4D in Blender:")
    for name in ("avatar.blend", "render.png", "avatar.glb", "avatar.ply"):
        print(f"  {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
