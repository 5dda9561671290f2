"""Procedural noise and textures: Perlin noise and seeded two-colour textures (a stand-in for DRAEM's texture dataset)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from swan_anomaly.anomalies.checks import _choices

#: Procedural textures that :func:`perlin_texture` and :func:`occlusion` can draw.
TEXTURE_KINDS = ("stripes", "checker", "marble")


def perlin_noise(rng: np.random.Generator, shape: tuple[int, int], res: tuple[int, int]) -> np.ndarray:
    """2-D Perlin (gradient) noise with ``res`` lattice cells along ``(y, x)``.

    Args:
        rng: draws the random unit gradients at the ``(res_y + 1) x (res_x + 1)`` lattice points.
        shape: ``(H, W)`` of the result; need not be a multiple of ``res``.
        res: number of noise periods along each axis (larger: finer blobs).

    Returns:
        ``[H, W]`` float64, roughly in ``[-0.7, 0.7]``, smooth at the scale ``H / res_y`` by ``W / res_x``.

    Example:
        >>> perlin_noise(np.random.default_rng(0), (64, 48), (4, 3)).shape
        (64, 48)
    """
    angles = rng.uniform(0, 2 * np.pi, size=(res[0] + 1, res[1] + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    gy = np.arange(shape[0]) * res[0] / shape[0]
    gx = np.arange(shape[1]) * res[1] / shape[1]
    iy, ix = gy.astype(int), gx.astype(int)
    fy, fx = (gy - iy)[:, None], (gx - ix)[None, :]

    def dot(dy: int, dx: int) -> np.ndarray:
        g = grads[(iy + dy)[:, None], (ix + dx)[None, :]]
        return g[..., 0] * (fx - dx) + g[..., 1] * (fy - dy)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    u, v = fade(fx), fade(fy)
    top = dot(0, 0) + u * (dot(0, 1) - dot(0, 0))
    bottom = dot(1, 0) + u * (dot(1, 1) - dot(1, 0))
    return top + v * (bottom - top)


def procedural_texture(rng: np.random.Generator, size: int, *, kinds: Sequence[str] = TEXTURE_KINDS) -> tuple[np.ndarray, dict]:
    """A seeded two-colour texture, a stand-in for DRAEM's external texture dataset.

    The two colours differ by at least 80 levels in every channel (modulo 256), so the texture
    always differs from any flat region it covers. Periods are 8-20 % of ``size``, coarse enough
    to survive an area downscale of the crop to 64 px.

    Args:
        rng: the only source of randomness.
        size: edge of the square texture in pixels.
        kinds: the kinds to choose from (:data:`TEXTURE_KINDS`).

    Returns:
        ``(texture [size, size, 3] uint8 RGB, recorded parameters)``.

    Example:
        >>> tex, info = procedural_texture(np.random.default_rng(1), 32)
        >>> tex.shape, info["kind"] in TEXTURE_KINDS
        ((32, 32, 3), True)
    """
    kinds = _choices("procedural_texture", "kinds", kinds, TEXTURE_KINDS)
    kind = kinds[int(rng.integers(len(kinds)))]
    c1 = rng.integers(0, 256, size=3)
    c2 = (c1 + rng.integers(80, 177, size=3)) % 256
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(0.08, 0.2)
    yy, xx = np.mgrid[0:size, 0:size] / size
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    if kind == "stripes":
        t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
    elif kind == "checker":
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(float)
    else:  # marble: stripes bent by Perlin turbulence
        turbulence = perlin_noise(rng, (size, size), (4, 4)) + 0.5 * perlin_noise(rng, (size, size), (8, 8))
        t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + 6.0 * turbulence)
    tex = np.round(c1 * (1 - t[..., None]) + c2 * t[..., None]).astype(np.uint8)
    info = {
        "kind": kind,
        "colors": [c1.tolist(), c2.tolist()],
        "angle_deg": round(math.degrees(theta), 2),
        "period_fraction": round(period, 4),
    }
    return tex, info
