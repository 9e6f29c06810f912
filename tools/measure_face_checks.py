"""Measure the face plausibility numbers behind docs/reliability.md, section 6.

Run:  ``PYTHONPATH=. .venv/bin/python tools/measure_face_checks.py [--fit] [NAME ...]``

For scikit-image's sample photos (the astronaut and the cameraman are people; the cat, the colour
wheel, coins, a cell, ... are not) and synthetic variants of the astronaut (rotated, blurred, tiny,
cut by the border), prints what :func:`backend.tracking.plausibility.check_face` decides and the
measurements it uses (face box, share of landmarks outside, face score). ``--fit`` also fits the toy
FLAME head and prints :func:`~backend.tracking.plausibility.fit_measures` (~10 s per image).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skimage import data  # noqa: E402

from backend.errors import MVP4DError  # noqa: E402
from backend.tracking import fit_flame, get_flame  # noqa: E402
from backend.tracking.landmarks import detect_faces  # noqa: E402
from backend.tracking.plausibility import check_face, cut_off_fraction, face_score, fit_measures  # noqa: E402


def _pasted(img: np.ndarray, scale: float, canvas: int = 1024) -> np.ndarray:
    small = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    out = np.full((canvas, canvas, 3), 200, np.uint8)
    out[100 : 100 + small.shape[0], 300 : 300 + small.shape[1]] = small
    return out


def _rotated(img: np.ndarray, deg: float) -> np.ndarray:
    h, w = img.shape[:2]
    M = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    return cv2.warpAffine(img, M, (w, h), borderValue=(255, 255, 255))


def images() -> dict[str, np.ndarray]:
    ast = data.astronaut()
    lfw = data.lfw_subset()
    out = {
        "astronaut": ast, "camera (man)": data.camera(), "chelsea (cat)": data.chelsea(),
        "cat x2": cv2.resize(data.chelsea(), None, fx=2, fy=2), "colorwheel": data.colorwheel(),
        "coins": data.coins(), "cell": data.cell(), "motorcycle": data.stereo_motorcycle()[0],
        "coffee": data.coffee(), "rocket": data.rocket(), "horse": data.horse().astype(np.uint8) * 255,
        "astronaut blur 6px": cv2.GaussianBlur(ast, (0, 0), 6), "astronaut upside down": np.ascontiguousarray(ast[::-1]),
        "astronaut 0.5x in 1024": _pasted(ast, 0.5), "astronaut 0.25x in 1024": _pasted(ast, 0.25),
        "astronaut 128px": cv2.resize(ast, (128, 128), interpolation=cv2.INTER_AREA),
        "astronaut 96px": cv2.resize(ast, (96, 96), interpolation=cv2.INTER_AREA),
    }
    for deg in (30, 60, 90, 180):
        out[f"astronaut rot {deg}"] = _rotated(ast, deg)
    for i in (0, 10, 20, 50):  # LFW faces (25 px, upscaled)
        out[f"lfw face {i}"] = cv2.resize((lfw[i] * 255).astype(np.uint8), (256, 256), interpolation=cv2.INTER_CUBIC)
    face = detect_faces(ast)[0]
    v0, v1 = face.box[1], face.box[3]
    for frac in (0.2, 0.35, 0.5):
        out[f"astronaut chin cut {frac:.0%}"] = np.ascontiguousarray(ast[: int(v1 - frac * (v1 - v0))])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--fit", action="store_true", help="also fit the toy FLAME head")
    args = ap.parse_args()
    flame = get_flame("toy") if args.fit else None
    for name, img in images().items():
        if args.names and name not in args.names:
            continue
        img = np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img[..., :3]
        img = np.ascontiguousarray(img.astype(np.uint8))
        faces = detect_faces(img)
        if not faces:
            print(f"{name:26s} no face found")
            continue
        f, warnings = faces[0], []
        try:
            check_face(img, f, warn=warnings.append)
            verdict = "warn" if warnings else "pass"
        except MVP4DError as e:
            verdict = "REFUSE: " + e.message[:50]
        line = (f"{name:26s} box={f.box_size:6.1f}px outside={cut_off_fraction(f):.2f} "
                f"score={face_score(img, f):.2f} {verdict}")
        if flame is not None:
            line += f" {fit_measures(fit_flame(flame, f, img.shape[1], img.shape[0]))}"
        print(line + (f" {warnings}" if warnings else ""), flush=True)


if __name__ == "__main__":
    main()
