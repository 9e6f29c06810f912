"""Rough GPU memory needs per generator, quality preset and VRAM mode, shown before Generate.

These are planning numbers for the UI (GiB, peak), not measurements: the MMVDM figures follow the
CogVideoX-2B-sized transformer at 512 px with the paper's token counts (bf16 weights ~5 GiB, the
largest attention over 1 + V (1 + F~) latent frames), with the low mode offloading weights to the CPU
and tiling the VAE. The projection generator and the avatar fit are light.
"""

from __future__ import annotations

#: (generator, preset) -> GiB at VRAM mode "high"; "medium"/"low" scale it down with offload/tiling
_HIGH = {
    ("mmvdm", "tiny"): 6.0, ("mmvdm", "preview"): 9.0, ("mmvdm", "120"): 30.0, ("mmvdm", "360"): 34.0,
    ("projection", "tiny"): 0.3, ("projection", "preview"): 0.5, ("projection", "120"): 2.0,
    ("projection", "360"): 2.5,
}
_MODE_FACTOR = {"HIGH": 1.0, "MEDIUM": 0.6, "LOW": 0.35}
#: CAP4D (backend/generators/cap4d.py estimate, bf16): GiB per VRAM mode, whatever the preset
_CAP4D_GIB = {"HIGH": 23.9, "MEDIUM": 7.1, "LOW": 4.3}
#: CAP4D compute per camera preset (its default quality: images x steps, 14.03 TFLOP per CFG 8-view
#: forward, ceil(images / 7) forwards per step; backend/cap4d/cost.py)
_CAP4D_PFLOP = {"tiny": 0.0, "preview": 21.1, "120": 42.1, "360": 168.4}
#: assumed effective GPU rate for the time estimate (40 % of an H100's bf16 dense rate; not measured)
_CAP4D_TFLOPS = 320.0


def vram_estimate_gib(generator: str, preset: str, vram_mode: str) -> float:
    if generator == "cap4d":
        return _CAP4D_GIB.get(vram_mode.upper(), _CAP4D_GIB["MEDIUM"])
    base = _HIGH.get((generator, preset), 8.0)
    if generator == "projection":
        return base
    return round(base * _MODE_FACTOR.get(vram_mode.upper(), 1.0), 1)


def describe(generator: str, preset: str, vram_mode: str) -> str:
    gib = vram_estimate_gib(generator, preset, vram_mode)
    where = "GPU or CPU" if generator == "projection" else "GPU"
    text = f"~{gib:g} GiB peak ({where}, {vram_mode.lower()} VRAM mode)"
    if generator == "cap4d" and _CAP4D_PFLOP.get(preset):
        minutes = _CAP4D_PFLOP[preset] * 1000.0 / _CAP4D_TFLOPS / 60.0
        text += f", ~{minutes:.0f} min sampling on an H100 + fit"
    return text
