"""Image and video metrics of the paper's Table 1: PSNR, SSIM, LPIPS, JOD, CSIM.

PSNR and SSIM are computed here (SSIM: the fit's definition, :func:`backend.avatar.losses.ssim`, an 11-tap
Gaussian window of sigma 1.5 on RGB in [0, 1]); JOD through ColorVideoVDP (:mod:`.jod`); LPIPS only with a
local TorchScript LPIPS module (``$MVP4D_LPIPS_WEIGHTS``, :func:`backend.avatar.losses.load_lpips`); CSIM
needs a face-identity network (ArcFace, as the paper) whose weights this project does not ship, so it is
reported as missing. A metric that cannot be computed is ``None`` with its reason in ``missing``; it is
never a made-up number.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..avatar.losses import load_lpips, ssim

__all__ = ["psnr_u8", "ssim_u8", "MetricSet"]

CSIM_MISSING = ("no face-identity (ArcFace) weights are available locally; CSIM needs them and nothing is "
                "downloaded")


def _unit(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).double() / 255.0


def psnr_u8(test: np.ndarray, reference: np.ndarray) -> float:
    """PSNR (dB) of two uint8 images; identical images give +inf."""
    mse = float(((test.astype(np.float64) - reference.astype(np.float64)) ** 2).mean()) / 255.0**2
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim_u8(test: np.ndarray, reference: np.ndarray) -> float:
    return float(ssim(_unit(test), _unit(reference)))


class MetricSet:
    """Which metrics run and why the others do not (see the module docstring)."""

    def __init__(self, jod: bool = True, lpips_path: str | None = None):
        self.missing: dict[str, str] = {"csim": CSIM_MISSING}
        self.lpips: Callable | None = load_lpips(lpips_path)
        if self.lpips is None:
            self.missing["lpips"] = ("no local LPIPS weights (set $MVP4D_LPIPS_WEIGHTS to a TorchScript LPIPS "
                                     "module; nothing is downloaded)")
        self.jod = False
        if jod:
            from .jod import load_cvvdp

            mod, reason = load_cvvdp()
            self.jod = mod is not None
            if not self.jod:
                self.missing["jod"] = str(reason)
        else:
            self.missing["jod"] = "skipped (--no-jod)"

    def lpips_u8(self, test: np.ndarray, reference: np.ndarray) -> float | None:
        if self.lpips is None:
            return None
        with torch.no_grad():
            return float(self.lpips(_unit(test).float(), _unit(reference).float()))

    def jod_video(self, test: np.ndarray, reference: np.ndarray, fps: float) -> float | None:
        if not self.jod:
            return None
        from .jod import jod

        return jod(test, reference, fps)
