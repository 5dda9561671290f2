"""Where a family draws: irregular polygons, their placement inside the ETL crop, their masks and coverage.

A crop window is ``(x0, y0, side)`` in frame pixels, as :func:`~swan_anomaly.images.crop_window` returns it.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def _polygon(rng: np.random.Generator, area: float, max_radius: float) -> tuple[np.ndarray, float]:
    """Vertex offsets ``[N, 2]`` of a star-shaped (hence simple) 5-10-gon of about ``area`` px, and its radius.

    The radius is capped at ``max_radius``, which then shrinks the area.
    """
    n = int(rng.integers(5, 11))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
    ratios = rng.uniform(0.45, 1.0, size=n)
    unit = np.stack([ratios * np.cos(angles), ratios * np.sin(angles)], axis=1)
    unit_area = 0.5 * abs(np.dot(unit[:, 0], np.roll(unit[:, 1], -1)) - np.dot(unit[:, 1], np.roll(unit[:, 0], -1)))
    radius = min(math.sqrt(area / max(unit_area, 1e-6)), max_radius)
    return unit * radius, radius


def _place(
    rng: np.random.Generator, window: tuple[int, int, int], radius: float, box: tuple[float, float, float, float] = (0, 1, 0, 1)
) -> tuple[float, float]:
    """A centre drawn in ``box`` (crop fractions ``x_lo, x_hi, y_lo, y_hi``), clamped so a shape of ``radius`` stays in the crop."""
    x0, y0, side = window
    margin = radius + 1  # vertices lie within `radius` of the centre; +1 for rounding
    lo, hi = x0 + margin, x0 + side - margin
    cx = min(max(x0 + side * rng.uniform(box[0], box[1]), lo), hi) if lo <= hi else x0 + side / 2
    lo, hi = y0 + margin, y0 + side - margin
    cy = min(max(y0 + side * rng.uniform(box[2], box[3]), lo), hi) if lo <= hi else y0 + side / 2
    return cx, cy


def _fill(shape: tuple[int, int], offsets: np.ndarray, center: tuple[float, float]) -> np.ndarray:
    """A ``[H, W]`` bool mask of the polygon ``center + offsets``."""
    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(offsets + np.asarray(center)).astype(np.int32)], 1)
    return mask.astype(bool)


def _region(
    rng: np.random.Generator, shape: tuple[int, int], window: tuple[int, int, int], area_fraction: float
) -> tuple[np.ndarray, dict]:
    """An irregular 5-10-gon covering about ``area_fraction`` of the crop, anywhere inside it."""
    side = window[2]
    offsets, radius = _polygon(rng, area_fraction * side * side, side / 2 - 1)
    center = _place(rng, window, radius)
    info = {"center": [round(center[0], 2), round(center[1], 2)], "radius": round(radius, 2), "vertices": len(offsets)}
    return _fill(shape, offsets, center), info


def _covered(mask: np.ndarray, window: tuple[int, int, int]) -> float:
    """Share of the crop covered by ``mask``."""
    return round(float(mask.sum()) / window[2] ** 2, 5)
