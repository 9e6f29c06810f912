"""Multi-view corpus generators behind one interface.

A generator renders the frames of one view: ``render(vertices (T,V,3), camera, check) -> uint8
(T, H, W, 3)`` where ``vertices`` is the head posed for every frame of the animation and ``check`` is
called between batches so a cancel lands quickly. ``projection`` is weights-free (the photo projected
onto the head). ``mmvdm`` (:mod:`.mmvdm`) is the paper's diffusion model; it works on the whole
sampling plan rather than view by view: ``MMVDMGenerator.generate(ring, vertices, ...)``; ``cap4d``
(:mod:`.cap4d`) runs CAP4D's public MMDM over all views and frames at once (stochastic I/O sampling).
"""

from __future__ import annotations

import numpy as np
import torch

from ..cameras import Camera
from ..errors import MVP4DError
from ..protocol import GeneratorSpec
from .projection import ProjectionGenerator

__all__ = ["ProjectionGenerator", "build_generator"]


def build_generator(
    spec: GeneratorSpec, *, faces: np.ndarray, reference_vertices: torch.Tensor,
    reference_camera: Camera, reference_image: np.ndarray,
) -> ProjectionGenerator:
    if spec.name == "projection":
        return ProjectionGenerator(faces, reference_vertices, reference_camera, reference_image)
    if spec.name == "mmvdm":
        raise MVP4DError("INTERNAL", "the mmvdm generator runs the whole plan: use generators.mmvdm.MMVDMGenerator")
    if spec.name == "cap4d":
        raise MVP4DError("INTERNAL", "the cap4d generator runs the whole job: use generators.cap4d.CAP4DGenerator")
    raise MVP4DError("BAD_INPUT", f"unknown generator {spec.name!r}", "Use 'projection', 'mmvdm' or 'cap4d'.")
