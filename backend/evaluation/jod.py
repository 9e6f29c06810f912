"""JOD (just-objectionable differences) of a rendered video against ground truth via ColorVideoVDP.

The paper's temporal-consistency metric (Table 1, Mantiuk et al.) is ColorVideoVDP's JOD: 10 = no
visible difference, lower = worse. ``cvvdp`` (PyPI, pinned in pyproject.toml) ships its calibrated
parameters inside the wheel; nothing is downloaded.

**Installing it beside our torch pin.** ``pip install cvvdp`` resolves to ``torchvision`` 0.28.0 (the one
matching torch 2.13) and keeps torch, but the registry's torchvision wheel is built against CUDA torch:
on the CPU build of torch its compiled operators do not load and ``import torchvision`` fails. cvvdp uses
torchvision for one thing only, ``transforms.GaussianBlur`` (and names ``ops.MLP`` for its separate ML
metrics, unused here). So the Makefile installs ``cvvdp`` without dependencies next to its other
requirements, and where torchvision cannot be imported :func:`load_cvvdp` gives pycvvdp a Gaussian blur
with torchvision's definition (kernel of ``kernel_size`` taps at offsets −(k−1)/2 … (k−1)/2, weights
exp(−x²/2σ²) normalised, separable, reflect padding) for the duration of its import only. Where cvvdp is
not installed at all, JOD is reported as unavailable with the reason — never as a number.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import torch

__all__ = ["load_cvvdp", "jod", "JOD_MAX", "DISPLAY"]

JOD_MAX = 10.0
#: ColorVideoVDP display model: a 24" full-HD monitor at ~60 cm, the metric's standard desktop viewing
DISPLAY = "standard_fhd"

_STATE: dict[str, Any] = {}


class _GaussianBlur(torch.nn.Module):
    """torchvision.transforms.GaussianBlur for tensors (..., H, W) with a fixed sigma."""

    def __init__(self, kernel_size, sigma=(0.1, 2.0)):
        super().__init__()
        k = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size, kernel_size)
        s = sigma if isinstance(sigma, (tuple, list)) else (sigma, sigma)
        self.kernel_size, self.sigma = (int(k[0]), int(k[1])), float(s[0])

    @staticmethod
    def _kernel(size: int, sigma: float, dtype, device) -> torch.Tensor:
        half = (size - 1) * 0.5
        x = torch.linspace(-half, half, steps=size, dtype=dtype, device=device)
        pdf = torch.exp(-0.5 * (x / sigma) ** 2)
        return pdf / pdf.sum()

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        shape = img.shape
        x = img.reshape(-1, 1, shape[-2], shape[-1])
        kx, ky = self.kernel_size
        px, py = kx // 2, ky // 2
        x = torch.nn.functional.pad(x, [px, px, py, py], mode="reflect")
        gx = self._kernel(kx, self.sigma, x.dtype, x.device).view(1, 1, 1, kx)
        gy = self._kernel(ky, self.sigma, x.dtype, x.device).view(1, 1, ky, 1)
        x = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, gx), gy)
        return x.reshape(shape)


def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
        return True
    except Exception:  # ImportError, or RuntimeError/OSError from a CUDA-built wheel on CPU torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False


def load_cvvdp() -> tuple[Any | None, str | None]:
    """``(pycvvdp module, None)`` or ``(None, why it is unavailable)``; cached."""
    if "module" in _STATE:
        return _STATE["module"], _STATE["reason"]
    shim = {}
    if not _torchvision_importable():
        tv = types.ModuleType("torchvision")
        tr = types.ModuleType("torchvision.transforms")
        ops = types.ModuleType("torchvision.ops")
        tr.GaussianBlur = _GaussianBlur

        def _no_mlp(*a, **k):
            raise RuntimeError("ColorVideoVDP's ML metrics need torchvision; only the cvvdp metric is used here")

        ops.MLP = _no_mlp
        tv.transforms, tv.ops = tr, ops
        shim = {"torchvision": tv, "torchvision.transforms": tr, "torchvision.ops": ops}
    module, reason = None, None
    try:
        sys.modules.update(shim)
        import pycvvdp

        module = pycvvdp
    except Exception as e:  # not installed, or broken: say why, never a number
        reason = f"ColorVideoVDP (cvvdp) is not usable here: {type(e).__name__}: {e}"
    finally:
        for name in shim:  # nobody else may mistake the blur-only stand-in for torchvision
            if sys.modules.get(name) is shim[name]:
                del sys.modules[name]
    _STATE.update(module=module, reason=reason)
    return module, reason


def jod(test: np.ndarray, reference: np.ndarray, fps: float) -> float:
    """ColorVideoVDP JOD of uint8 videos ``(T, H, W, 3)`` (sRGB; a single image when T = 1)."""
    mod, reason = load_cvvdp()
    if mod is None:
        raise RuntimeError(reason)
    if "metric" not in _STATE:
        _STATE["metric"] = mod.cvvdp(display_name=DISPLAY, quiet=True, device=torch.device("cpu"))
    metric = _STATE["metric"]
    t = torch.from_numpy(np.ascontiguousarray(test))
    r = torch.from_numpy(np.ascontiguousarray(reference))
    if t.shape != r.shape or t.ndim != 4:
        raise ValueError(f"jod: videos must be equal (T, H, W, 3), got {tuple(t.shape)} and {tuple(r.shape)}")
    with torch.no_grad():
        if t.shape[0] == 1:
            q, _ = metric.predict(t[0], r[0], dim_order="HWC")
        else:
            q, _ = metric.predict(t, r, dim_order="FHWC", frames_per_second=float(fps))
    return float(q)
