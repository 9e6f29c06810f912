"""Evaluate an avatar like the paper's Table 1 (``python -m backend evaluate``); see :mod:`.evaluate`."""
