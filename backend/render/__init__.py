"""Rendering: a plain-torch mesh rasterizer (no pytorch3d / nvdiffrast) and Gaussian splatting
(gsplat on CUDA, a sparse torch compositor on CPU: :mod:`.gaussians`)."""

from .gaussians import RenderOutput
from .gaussians import rasterize as rasterize_gaussians
from .raster import Fragments, interpolate, project_points, rasterize

__all__ = ["Fragments", "RenderOutput", "interpolate", "project_points", "rasterize", "rasterize_gaussians"]
