"""Contact sheets: one PNG that shows a whole multi-view corpus (rows = views, columns = frames)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

GAP = 2  # pixels of grey between tiles


def pick_columns(num_frames: int, max_columns: int) -> list[int]:
    """Evenly spaced frame indices, always including the first and the last frame."""
    if num_frames <= max_columns:
        return list(range(num_frames))
    return sorted({round(i * (num_frames - 1) / (max_columns - 1)) for i in range(max_columns)})


def contact_sheet(
    load_frame: Callable[[int, int], np.ndarray],
    num_views: int,
    num_frames: int,
    *,
    max_columns: int = 9,
    tile: int = 96,
    key_views: Sequence[int] = (),
) -> np.ndarray:
    """Build an (rows × columns) grid of ``tile``-sized thumbnails; key-view rows get an orange bar.

    ``load_frame(view, frame)`` returns a uint8 (H, W, 3) image; only the frames shown are loaded.
    """
    cols = pick_columns(num_frames, max_columns)
    bar = 4
    h = num_views * (tile + GAP) + GAP
    w = bar + len(cols) * (tile + GAP) + GAP
    sheet = np.full((h, w, 3), 96, np.uint8)
    for v in range(num_views):
        y = GAP + v * (tile + GAP)
        if v in key_views:
            sheet[y : y + tile, :bar] = (255, 140, 0)
        for c, f in enumerate(cols):
            img = Image.fromarray(np.asarray(load_frame(v, f), np.uint8)).resize((tile, tile), Image.BILINEAR)
            x = bar + GAP + c * (tile + GAP)
            sheet[y : y + tile, x : x + tile] = np.asarray(img)[..., :3]
    return sheet
