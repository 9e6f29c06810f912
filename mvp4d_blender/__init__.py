"""MVP4D for Blender: one portrait photo -> an animatable 4D Gaussian head avatar driven by a FLAME rig.

A Blender 4.2+ extension (manifest: ``blender_manifest.toml`` in the zip). Layout:

* ``io/``       format code and maths without bpy (cameras, FLAME arrays, binding, bundle, PLY, glTF, jobs)
* ``blender/``  preferences, scene properties, operators, panels, Geometry Nodes and the job runtime
* ``backend_src/`` (in the zip) the backend source: ``backend/protocol.py`` is the contract imported
  here; the backend itself always runs in its own Python (``python -m backend``), never in Blender's.

Scripting: every feature is an operator with parameters, e.g.
``bpy.ops.mvp4d.generate_avatar(image=..., rig=..., preset="tiny", wait=True)``.
"""

from __future__ import annotations


def register() -> None:
    # imported here so `mvp4d_blender.io` stays importable without bpy (tests, tools)
    from .blender import register as _register

    _register()


def unregister() -> None:
    from .blender import unregister as _unregister

    _unregister()
