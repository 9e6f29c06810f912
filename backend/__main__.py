"""Entry point for ``python -m backend``."""

import sys

from .cli import main

sys.exit(main())
