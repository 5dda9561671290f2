"""What every anomaly family checks first: the input frame (and its crop window) and its knob values.

:data:`FamilyResult` is the ``(out, mask, params)`` triple every family returns. :func:`_signed` sits
here because it draws from a knob range that :func:`_pair` checked, flipping the sign to keep a shift visible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from swan_anomaly.images import crop_window

#: ``(out [H, W, 3] uint8, mask [H, W] bool, params)``: what every family returns.
FamilyResult = tuple[np.ndarray, np.ndarray, dict]


def _window(image: np.ndarray, family: str, bias_x: float, bias_y: float) -> tuple[int, int, int]:
    """Check the input frame and return the ETL crop window ``(x0, y0, side)``."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}".strip()
        msg = f"{family}: expected an RGB [H, W, 3] uint8 image, got {got}"
        raise ValueError(msg)
    h, w = image.shape[:2]
    if min(h, w) < 16:
        msg = f"{family}: a {h}x{w} image is too small; anomalies need a crop side of at least 16 px"
        raise ValueError(msg)
    return crop_window(h, w, bias_x=bias_x, bias_y=bias_y)


def _pair(family: str, name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    """Validate a ``(lo, hi)`` range knob inside ``[low, high]``."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        msg = f"{family}: {name} must be a (low, high) pair, got {value!r}"
        raise ValueError(msg) from None
    if not low <= lo <= hi <= high:
        msg = f"{family}: {name} must satisfy {low} <= low <= high <= {high}, got {value!r}"
        raise ValueError(msg)
    return lo, hi


def _choices(family: str, name: str, value: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    """Validate a non-empty selection from ``known``."""
    chosen = (value,) if isinstance(value, str) else tuple(value)
    unknown = [v for v in chosen if v not in known]
    if not chosen or unknown:
        msg = f"{family}: {name} must be a non-empty selection of {list(known)}, got {value!r}"
        raise ValueError(msg)
    return chosen


def _signed(rng: np.random.Generator, magnitude: tuple[float, float], level: float, top: float) -> float:
    """A shift of random sign and magnitude, its sign flipped when ``level + shift`` would leave ``[0, top]``.

    The flip keeps a shift from being clipped away (a brightening of a white region changes nothing).
    """
    shift = rng.uniform(*magnitude) * (1.0 if rng.random() < 0.5 else -1.0)
    return -shift if not 0.0 <= level + shift <= top else shift
