"""``python -m backend.gpucheck``: see ``backend.gpucheck.runner``."""

import sys

from .runner import main

sys.exit(main())
