"""MVP4D backend: one portrait photo -> multi-view corpus -> animatable 4D Gaussian head avatar.

Run ``python -m backend --help``. The contract with the Blender add-on is :mod:`backend.protocol`.
"""

__version__ = "0.1.0"
