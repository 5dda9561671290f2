"""A preview of the families as the model sees them: one labelled, cropped and resized tile per family."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from swan_anomaly.anomalies.planning import stable_seed
from swan_anomaly.anomalies.registry import FAMILIES, _resolve
from swan_anomaly.images import crop_and_resize


def family_grid(
    image: np.ndarray,
    *,
    seed: int = 0,
    families: Sequence[str] | None = None,
    tile: int = 192,
    family_kwargs: Mapping[str, Mapping[str, object]] | None = None,
) -> np.ndarray:
    """One labelled tile per family, as the model sees it: the original, then each family.

    Each tile is the ETL crop of the (anomalous) frame, area-resized to ``tile`` pixels, with the
    family's name drawn in its top-left corner. Tiles fill rows of at most four.

    Args:
        image: RGB ``[H, W, 3]`` uint8 frame.
        seed: seeds every family (one stream per family name).
        families: keys of :data:`FAMILIES` (default: all of them, in registry order).
        tile: edge of a tile in pixels (at least 32).
        family_kwargs: knobs per family, as for :func:`synthesize_dataset`.

    Returns:
        ``[rows * tile, min(4, n) * tile, 3]`` uint8 RGB grid.

    Raises:
        ValueError: an unknown family or knob, or a tile below 32 px.

    Example:
        >>> grid = family_grid(np.full((120, 160, 3), 100, np.uint8), tile=64)
        >>> grid.shape
        (128, 256, 3)
    """
    if tile < 32:
        msg = f"tile must be at least 32 px to hold a label, got {tile}"
        raise ValueError(msg)
    knobs = _resolve(tuple(FAMILIES) if families is None else families, family_kwargs)
    tiles = [("original", crop_and_resize(image, size=tile))]
    for name, kw in knobs.items():
        out, _, _ = FAMILIES[name](image, np.random.default_rng(stable_seed(seed, "grid", name)), **kw)
        tiles.append((name, crop_and_resize(out, size=tile, bias_x=kw["bias_x"], bias_y=kw["bias_y"])))
    cols = min(4, len(tiles))
    rows = -(-len(tiles) // cols)
    grid = np.zeros((rows * tile, cols * tile, 3), dtype=np.uint8)
    scale = tile / 400
    for i, (name, t) in enumerate(tiles):
        t = t.copy()  # a crop already at tile size is a view of the caller's image
        for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # outlined text reads on any background
            cv2.putText(t, name, (4, 4 + round(24 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
        r, c = divmod(i, cols)
        grid[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = t
    return grid
