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


def vram_estimate_gib(generator: str, preset: str, vram_mode: str) -> float:
    base = _HIGH.get((generator, preset), 8.0)
    if generator == "projection":
        return base
    return round(base * _MODE_FACTOR.get(vram_mode.upper(), 1.0), 1)


def describe(generator: str, preset: str, vram_mode: str) -> str:
    gib = vram_estimate_gib(generator, preset, vram_mode)
    where = "GPU or CPU" if generator == "projection" else "GPU"
    return f"~{gib:g} GiB peak ({where}, {vram_mode.lower()} VRAM mode)"
