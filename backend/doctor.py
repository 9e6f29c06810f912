"""``python -m backend doctor``: what this installation has and what it is missing, with fixes.

The add-on's "Check" button shows this report. Each entry says ``ok`` and, when not ok, a ``fix``.
Nothing here downloads anything or needs a GPU.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import platform
import sys
from pathlib import Path
from typing import Any

# distribution name -> import name; "required" ones make the report not ok when missing
PACKAGES: dict[str, tuple[str, bool]] = {
    "torch": ("torch", True),
    "numpy": ("numpy", True),
    "scipy": ("scipy", True),
    "mediapipe": ("mediapipe", True),
    "opencv-contrib-python": ("cv2", True),
    "pillow": ("PIL", True),
    "scikit-image": ("skimage", True),
    "safetensors": ("safetensors", True),
    "trimesh": ("trimesh", True),
    "plyfile": ("plyfile", True),
    "diffusers": ("diffusers", True),  # the MMVDM (transformer, VAE, scheduler)
    "gsplat": ("gsplat", True),  # the avatar fit's Gaussian projection (CUDA kernels or its torch reference)
    "rich": ("rich", True),  # the command line's progress display
}


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"ok": False, "device": None, "fix": "Run 'make install' (installs torch==2.13.0)."}
    info: dict[str, Any] = {"ok": True, "version": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["device"] = "cuda"
        info["gpu"] = torch.cuda.get_device_name(0)
        info["vram_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        info["device"] = "cpu"
        info["note"] = "No CUDA GPU: the projection generator and tests run on CPU; the MMVDM needs a GPU."
    return info


def _gsplat_path(cuda: bool) -> dict[str, Any]:
    if _version("gsplat") is None:
        return {"ok": False, "path": "missing",
                "fix": "Run 'make install' in the project folder (or 'Install backend' in the add-on): "
                       "the avatar fit needs gsplat==1.5.3."}
    return {"ok": True, "path": "cuda" if cuda else "cpu-reference"}


def _flame_info(flame: str | None) -> dict[str, Any]:
    flame = flame or os.environ.get("MVP4D_FLAME")
    info: dict[str, Any] = {"toy": "embedded", "configured": flame}
    if not flame or flame == "toy":
        info.update(ok=True, note="Using the embedded toy head. For real avatars set a FLAME file "
                    "(FLAME 2023 Open is CC BY 4.0; register at flame.is.tue.mpg.de).")
        return info
    from .flame.io import load_flame

    try:
        model = load_flame(flame)
        info.update(ok=True, model_id=model.model_id, vertices=model.num_vertices,
                    landmarks=0 if model.landmark_ids is None else int(len(model.landmark_ids)))
        if model.landmark_ids is None:
            info["fix"] = "Put FLAME's mediapipe_landmark_embedding.npz next to the FLAME file to enable tracking."
    except Exception as e:  # noqa: BLE001 - report, don't crash the doctor
        info.update(ok=False, error=str(e), fix="Point to an unmodified FLAME .pkl/.npz.")
    return info


def _weights_info(weights: str | None) -> dict[str, Any]:
    """The same check the MMVDM generator runs before a job (headers only, no tensor data loaded)."""
    weights = weights or os.environ.get("MVP4D_WEIGHTS")
    if not weights:
        return {"ok": True, "configured": None,
                "note": "No MMVDM weights configured: the projection generator is used."}
    from .errors import MVP4DError
    from .mmvdm.weights import check_weights

    info: dict[str, Any] = {"configured": str(Path(weights))}
    if (Path(weights) / "cap4d.json").is_file() or Path(weights).suffix == ".ckpt":
        from .cap4d.weights import check_weights as check_cap4d

        try:  # CAP4D's public model (a converted folder, or the .ckpt itself)
            found = check_cap4d(weights)
            info.update(ok=True, generator="cap4d", licence=found["info"].get("licence"), kind=found["kind"])
        except MVP4DError as e:
            info.update(ok=False, generator="cap4d", code=e.code, error=e.message, fix=e.hint)
        return info
    try:
        found = check_weights(weights)
        info.update(ok=True, transformer_dtype=str(found["transformer_dtype"]))
    except MVP4DError as e:
        info.update(ok=False, code=e.code, error=e.message, fix=e.hint)
    return info


def doctor_report(flame: str | None = None, weights: str | None = None) -> dict[str, Any]:
    packages = {}
    for dist, (mod, required) in PACKAGES.items():
        v = _version(dist)
        entry: dict[str, Any] = {"version": v, "required": required, "ok": v is not None or not required}
        if v is not None:
            try:
                importlib.import_module(mod)
            except Exception as e:  # noqa: BLE001
                entry.update(ok=False, error=f"{type(e).__name__}: {e}")
        if not entry["ok"]:
            entry["fix"] = "Run 'make install' in the project folder (or 'Install backend' in the add-on)."
        packages[dist] = entry
    torch_info = _torch_info()
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
        "torch": torch_info,
        "gsplat": _gsplat_path(bool(torch_info.get("cuda_available"))),
        "flame": _flame_info(flame),
        "weights": _weights_info(weights),
    }
    report["ok"] = all(e["ok"] for e in packages.values()) and all(
        report[k]["ok"] for k in ("torch", "gsplat", "flame", "weights")
    )
    return report
