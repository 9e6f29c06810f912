"""Rendering: a plain-torch mesh rasterizer (no pytorch3d / nvdiffrast)."""

from .raster import Fragments, interpolate, project_points, rasterize

__all__ = ["Fragments", "interpolate", "project_points", "rasterize"]
