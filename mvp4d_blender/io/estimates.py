"""The GPU memory (and, for CAP4D, time) estimate shown before Generate, worded for the panel.

The numbers are the backend's own (``backend.estimates.ui_estimate``, the definition the generators
check against the free GPU memory), read from the backend copy shipped in the extension through
:mod:`mvp4d_blender.backend_link`; nothing here imports torch or bpy.
"""

from __future__ import annotations

from .. import backend_link


def describe(generator: str, preset: str, vram_mode: str) -> str:
    """One line, e.g. ``~9.8 GiB peak (GPU, medium VRAM mode)`` or CAP4D's with its sampling time."""
    est = backend_link.estimates().ui_estimate(generator, preset, vram_mode)
    if est["peak_gib"] is None:
        return "light: runs on the GPU or the CPU"
    text = f"~{est['peak_gib']:.1f} GiB peak (GPU, {vram_mode.lower()} VRAM mode)"
    if est["minutes"] is not None:
        text += f", ~{est['minutes']:.0f} min sampling on an H100 + fit"
    return text
