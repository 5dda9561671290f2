"""Synthetic anomaly families: pure, seeded functions on RGB frames.

Every family is a function ``fn(image, rng, *, bias_x=0.4, bias_y=0.5, **knobs) -> (out, mask, params)``:
``image`` is an RGB ``[H, W, 3]`` uint8 frame (never modified), ``rng`` a ``numpy.random.Generator``
(the only source of randomness), ``out`` the anomalous copy, ``mask`` a ``[H, W]`` bool array of
exactly the pixels the family may change, and ``params`` a JSON-serialisable dict of every value
drawn. Defects are placed inside the square the ETL crop keeps (:func:`~swan_anomaly.images.crop_window`)
and are sized to survive that crop's area downscale to the model input (64 px offline, 224 px ViT-B):
a few percent to about 15 % of the crop, with structures of at least ``crop side / 72`` pixels.

Families (:data:`FAMILIES`):
    ``salt_pepper_polygons``: separate salt (255) and pepper (0) patches, irregular 5-10-gons in a
    central region and in bands along the crop's edges, filled with coarse impulse-noise grains.
    ``cutpaste``: a rectangle of the frame copied elsewhere, maybe rotated, with a brightness jitter
    (CutPaste, Li et al. 2021).
    ``perlin_texture``: a thresholded Perlin-noise mask blends in a procedural foreign texture (DRAEM).
    ``occlusion``: a solid or textured irregular polygon, rotated rectangle or ellipse.
    ``local_blur``: a strong Gaussian blur inside an irregular polygon.
    ``color_shift``: a hue, saturation and value shift inside an irregular polygon.

Where anomalies are injected relative to JPEG encoding: into the lossless PNG frame written by
frame extraction, before the single JPEG encode of the ETL job (crop, area resize to the model
size, JPEG). Normal and abnormal images, training and validation alike, then go through exactly
the same processing (and the augmentation job treats both classes alike), so a model cannot
separate the classes by compression artefacts. JPEG smooths impulse noise and the area resize
averages it, which is why noise grains and textures are sized in crop pixels to survive both.

Example:
    >>> import numpy as np
    >>> frame = np.full((240, 320, 3), 120, dtype=np.uint8)
    >>> out, mask, params = salt_pepper_polygons(frame, np.random.default_rng(0))
    >>> out.shape == frame.shape and bool(mask.any()) and 2 <= params["n_regions"] <= 18
    True
    >>> changed = (out != frame).any(axis=2)
    >>> bool((changed & ~mask).any())
    False
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from swan_anomaly.images import crop_and_resize, crop_window, decode_image, encode_png

log = logging.getLogger(__name__)

NORMAL_FAMILY = "none"

#: Families used when a caller names none (the offline demo's behaviour).
DEFAULT_FAMILIES = ("salt_pepper_polygons",)

#: Procedural textures that :func:`perlin_texture` and :func:`occlusion` can draw.
TEXTURE_KINDS = ("stripes", "checker", "marble")

#: Placement zones of :func:`salt_pepper_polygons`: the central region, then the four edge bands.
ZONES = ("center", "top", "bottom", "left", "right")

FamilyResult = tuple[np.ndarray, np.ndarray, dict]


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from a stable key (sha256, not ``hash()``, which is salted per process)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


# --- shared helpers ----------------------------------------------------------------------------


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


# --- families ----------------------------------------------------------------------------------


def salt_pepper_polygons(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    area_fraction: tuple[float, float] = (0.03, 0.08),
    salt_share: float = 0.5,
    patches_per_color: tuple[int, int] = (1, 9),
    density: float = 0.8,
    grain: int | None = None,
    center_weight: float = 0.5,
    band_width: float = 0.2,
    bias_x: float = 0.4,
    bias_y: float = 0.5,
) -> FamilyResult:
    """Separate salt and pepper patches: irregular 5-10-gons filled with coarse impulse noise.

    Placement ("one central region plus edge bands"): each patch's centre is drawn either in the
    central region of the crop (its middle half, ``[0.25, 0.75]`` of the side on both axes, with
    probability ``center_weight``) or in one of four bands along the crop's edges (``band_width``
    of the side deep, chosen uniformly), then clamped so the whole patch stays inside the crop.
    The swans sit in the centre, and the edge bands keep the model from learning "anomalies are
    always central". Salt patches are drawn first; a pepper patch wins where the two overlap.

    Args:
        image: RGB ``[H, W, 3]`` uint8 frame (not modified).
        rng: the only source of randomness.
        area_fraction: range of the target share of the crop covered by all patches together.
            The covered share is recorded as ``covered_fraction``: overlaps make it smaller, and
            rasterising many small patches larger (about +10 % on a 240-px crop, more on tiny ones).
            The default matches the mean coverage (about 5 %) of the earlier 2-4 mixed polygons.
        salt_share: share of that area given to salt patches (the rest to pepper); a colour with
            no area gets no patch.
        patches_per_color: inclusive range (within 1-9) of the number of patches per colour.
        density: share of the grains inside a patch that become salt or pepper.
        grain: edge of a noise grain in pixels (default: crop side / 72, at least 1). Grains of
            about ``crop side / model input side`` survive the ETL's downscaling and JPEG
            encoding; one-pixel noise would average out into a smooth grey blob.
        center_weight: probability that a patch goes to the central region rather than a band.
        band_width: depth of the edge bands as a fraction of the crop side.
        bias_x: horizontal crop bias of the ETL job; patches stay inside its window.
        bias_y: vertical crop bias of the ETL job.

    Returns:
        ``(image [H, W, 3] uint8, mask [H, W] bool, params)``; the mask marks the salt and pepper
        pixels, which are exactly the changed ones (unless already 255 or 0).

    Raises:
        ValueError: a knob is out of range, or the image is not an RGB uint8 frame of at least 16 px.

    Example:
        >>> frame = np.full((120, 160, 3), 90, np.uint8)
        >>> out, mask, p = salt_pepper_polygons(frame, np.random.default_rng(3), salt_share=1.0)
        >>> p["n_pepper"], set(np.unique(out[mask]).tolist())
        (0, {255})
    """
    family = "salt_pepper_polygons"
    window = _window(image, family, bias_x, bias_y)
    area_range = _pair(family, "area_fraction", area_fraction, 1e-4, 0.5)
    n_range = _pair(family, "patches_per_color", patches_per_color, 1, 9)
    for name, value in (("salt_share", salt_share), ("density", density), ("center_weight", center_weight)):
        if not 0.0 <= value <= 1.0:
            msg = f"{family}: {name} must be in [0, 1], got {value!r}"
            raise ValueError(msg)
    if not 0.0 < band_width <= 0.5:
        msg = f"{family}: band_width must be in (0, 0.5], got {band_width!r}"
        raise ValueError(msg)
    if grain is not None and grain < 1:
        msg = f"{family}: grain must be a positive number of pixels, got {grain!r}"
        raise ValueError(msg)
    h, w = image.shape[:2]
    x0, y0, side = window
    grain = grain or max(1, round(side / 72))
    zone_boxes = {
        "center": (0.25, 0.75, 0.25, 0.75),
        "top": (0.0, 1.0, 0.0, band_width),
        "bottom": (0.0, 1.0, 1.0 - band_width, 1.0),
        "left": (0.0, band_width, 0.0, 1.0),
        "right": (1.0 - band_width, 1.0, 0.0, 1.0),
    }

    area = rng.uniform(*area_range)
    shares = {"salt": salt_share, "pepper": 1.0 - salt_share}
    counts = {c: int(rng.integers(int(n_range[0]), int(n_range[1]) + 1)) if shares[c] > 0 else 0 for c in ("salt", "pepper")}
    labels = np.zeros((h, w), dtype=np.uint8)  # 0: untouched, 1: salt patch, 2: pepper patch
    patches = []
    for value, colour in ((1, "salt"), (2, "pepper")):
        if not counts[colour]:
            continue
        weights = rng.uniform(0.5, 1.5, size=counts[colour])
        for weight in weights / weights.sum():
            zone = ZONES[0] if rng.random() < center_weight else ZONES[1 + int(rng.integers(4))]
            offsets, radius = _polygon(rng, area * shares[colour] * weight * side * side, side / 2 - 1)
            center = _place(rng, window, radius, zone_boxes[zone])
            labels[_fill((h, w), offsets, center)] = value
            patches.append(
                {
                    "color": colour,
                    "zone": zone,
                    "center": [round(center[0], 2), round(center[1], 2)],
                    "radius": round(radius, 2),
                    "vertices": len(offsets),
                }
            )
    gh, gw = -(-h // grain), -(-w // grain)
    draw = rng.random((gh, gw))
    if grain > 1:
        draw = draw.repeat(grain, axis=0).repeat(grain, axis=1)[:h, :w]
    noisy = (labels > 0) & (draw < density)
    out = image.copy()
    out[noisy & (labels == 1)] = 255
    out[noisy & (labels == 2)] = 0
    params = {
        "area_fraction": round(area, 5),
        "covered_fraction": _covered(labels > 0, window),
        "salt_share": salt_share,
        "density": density,
        "grain": grain,
        "n_salt": counts["salt"],
        "n_pepper": counts["pepper"],
        "n_regions": len(patches),
        "vertices": [p["vertices"] for p in patches],
        "patches": patches,
    }
    return out, noisy, params


def cutpaste(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    area_fraction: tuple[float, float] = (0.04, 0.12),
    aspect_ratio: tuple[float, float] = (0.3, 3.3),
    rotate_prob: float = 0.5,
    max_angle: float = 45.0,
    brightness: tuple[float, float] = (10.0, 30.0),
    bias_x: float = 0.4,
    bias_y: float = 0.5,
) -> FamilyResult:
    """Copy a rectangle of the frame to another place in the crop (CutPaste, Li et al. 2021).

    The patch is cut from the crop, rotated with probability ``rotate_prob`` and shifted in
    brightness, then pasted so that it lies entirely inside the crop, away from its source
    where the crop leaves room. The brightness jitter (its sign flipped where the patch has no
    headroom, see ``brightness``) makes the paste change pixels even on a flat image, where a
    plain copy would be invisible.

    Args:
        image: RGB ``[H, W, 3]`` uint8 frame (not modified).
        rng: the only source of randomness.
        area_fraction: range of the patch area as a share of the crop (the paper uses 2-15 %).
        aspect_ratio: range of width / height, drawn log-uniformly.
        rotate_prob: probability of rotating the patch.
        max_angle: rotations are drawn in ``[-max_angle, max_angle]`` degrees.
        brightness: range of the magnitude of the brightness shift added to the patch, in levels;
            the sign is random unless the patch's mean level would leave ``[0, 255]``.
        bias_x: horizontal crop bias of the ETL job; the paste stays inside its window.
        bias_y: vertical crop bias of the ETL job.

    Returns:
        ``(image [H, W, 3] uint8, mask [H, W] bool of the pasted footprint, params)``.

    Raises:
        ValueError: a knob is out of range, or the image is not an RGB uint8 frame of at least 16 px.

    Example:
        >>> frame = np.full((96, 128, 3), 200, np.uint8)
        >>> out, mask, p = cutpaste(frame, np.random.default_rng(0))
        >>> bool((out != frame).any(axis=2)[mask].all()), p["brightness_delta"] < 0 or p["brightness_delta"] > 0
        (True, True)
    """
    family = "cutpaste"
    x0, y0, side = _window(image, family, bias_x, bias_y)
    area_range = _pair(family, "area_fraction", area_fraction, 1e-4, 0.5)
    aspect_range = _pair(family, "aspect_ratio", aspect_ratio, 0.05, 20.0)
    brightness_range = _pair(family, "brightness", brightness, 0.0, 255.0)
    if not 0.0 <= rotate_prob <= 1.0 or not 0.0 <= max_angle <= 180.0:
        msg = f"{family}: rotate_prob must be in [0, 1] and max_angle in [0, 180], got {rotate_prob!r}, {max_angle!r}"
        raise ValueError(msg)
    h, w = image.shape[:2]

    area = rng.uniform(*area_range) * side * side
    aspect = math.exp(rng.uniform(math.log(aspect_range[0]), math.log(aspect_range[1])))
    angle = rng.uniform(-max_angle, max_angle) if rng.random() < rotate_prob else 0.0
    # the rotated patch's bounding box must fit in the crop: shrink the patch until it does
    cos, sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    pw, ph = math.sqrt(area * aspect), math.sqrt(area / aspect)
    scale = min(1.0, (side - 1) / (pw * cos + ph * sin), (side - 1) / (pw * sin + ph * cos))
    pw, ph = max(2, int(pw * scale)), max(2, int(ph * scale))
    sx, sy = x0 + int(rng.integers(0, side - pw + 1)), y0 + int(rng.integers(0, side - ph + 1))
    patch = image[sy : sy + ph, sx : sx + pw]
    footprint = np.ones((ph, pw), dtype=np.uint8)
    if angle:
        bw, bh = min(side, math.ceil(pw * cos + ph * sin)), min(side, math.ceil(pw * sin + ph * cos))
        matrix = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, 1.0)
        matrix[:, 2] += ((bw - pw) / 2, (bh - ph) / 2)
        patch = cv2.warpAffine(patch, matrix, (bw, bh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        footprint = cv2.warpAffine(footprint, matrix, (bw, bh), flags=cv2.INTER_NEAREST, borderValue=0)
    bh, bw = footprint.shape
    inside = footprint.astype(bool)
    delta = _signed(rng, brightness_range, float(patch[inside].mean()), 255.0)
    patch = np.clip(np.round(patch.astype(np.float32) + delta), 0, 255).astype(np.uint8)
    # up to 8 tries for a destination at least half a patch away from the source
    for _ in range(8):
        dx, dy = x0 + int(rng.integers(0, side - bw + 1)), y0 + int(rng.integers(0, side - bh + 1))
        if abs(dx - sx) >= bw / 2 or abs(dy - sy) >= bh / 2:
            break
    mask = np.zeros((h, w), dtype=bool)
    mask[dy : dy + bh, dx : dx + bw] = inside
    out = image.copy()
    out[mask] = patch[inside]
    params = {
        "area_fraction": round(pw * ph / side**2, 5),
        "covered_fraction": _covered(mask, (x0, y0, side)),
        "aspect_ratio": round(aspect, 4),
        "patch_size": [pw, ph],
        "source": [sx, sy],
        "destination": [dx, dy],
        "angle_deg": round(angle, 3),
        "brightness_delta": round(delta, 3),
    }
    return out, mask, params


def perlin_texture(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    area_fraction: tuple[float, float] = (0.04, 0.15),
    scale_exponents: tuple[int, int] = (1, 3),
    opacity: tuple[float, float] = (0.5, 1.0),
    textures: Sequence[str] = TEXTURE_KINDS,
    bias_x: float = 0.4,
    bias_y: float = 0.5,
) -> FamilyResult:
    """Blend a foreign texture through a thresholded Perlin-noise mask (DRAEM, Zavrtanik et al. 2021).

    Perlin noise over the crop, with ``2**k`` periods per axis (``k`` drawn per axis, so blobs may
    be stretched), is thresholded at the quantile that covers the drawn ``area_fraction`` of the
    crop. Inside that mask a seeded :func:`procedural_texture` (instead of DRAEM's external
    texture dataset) is blended in with the drawn opacity.

    Args:
        image: RGB ``[H, W, 3]`` uint8 frame (not modified).
        rng: the only source of randomness.
        area_fraction: range of the share of the crop the mask covers.
        scale_exponents: inclusive range of ``k`` (within 0-6); the default 1-3 (2-8 periods per
            crop side) keeps the blobs at least about 4 px wide at a 64-px model input.
        opacity: range of the texture's weight in the blend (1: the texture replaces the frame).
        textures: kinds of texture to choose from (:data:`TEXTURE_KINDS`).
        bias_x: horizontal crop bias of the ETL job; the mask stays inside its window.
        bias_y: vertical crop bias of the ETL job.

    Returns:
        ``(image [H, W, 3] uint8, mask [H, W] bool, params)``.

    Raises:
        ValueError: a knob is out of range, or the image is not an RGB uint8 frame of at least 16 px.

    Example:
        >>> frame = np.full((96, 128, 3), 60, np.uint8)
        >>> out, mask, p = perlin_texture(frame, np.random.default_rng(2))
        >>> 0.03 < p["covered_fraction"] < 0.16, p["texture"]["kind"] in TEXTURE_KINDS
        (True, True)
    """
    family = "perlin_texture"
    x0, y0, side = _window(image, family, bias_x, bias_y)
    area_range = _pair(family, "area_fraction", area_fraction, 1e-3, 0.5)
    exp_range = _pair(family, "scale_exponents", scale_exponents, 0, 6)
    opacity_range = _pair(family, "opacity", opacity, 0.0, 1.0)
    textures = _choices(family, "textures", textures, TEXTURE_KINDS)

    area = rng.uniform(*area_range)
    res = (2 ** int(rng.integers(exp_range[0], exp_range[1] + 1)), 2 ** int(rng.integers(exp_range[0], exp_range[1] + 1)))
    noise = perlin_noise(rng, (side, side), res)
    threshold = float(np.quantile(noise, 1.0 - area))
    inside = noise > threshold
    alpha = rng.uniform(*opacity_range)
    texture, texture_info = procedural_texture(rng, side, kinds=textures)
    crop = image[y0 : y0 + side, x0 : x0 + side].astype(np.float32)
    blended = np.clip(np.round((1.0 - alpha) * crop + alpha * texture), 0, 255).astype(np.uint8)
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[y0 : y0 + side, x0 : x0 + side] = inside
    out = image.copy()
    out[mask] = blended[inside]
    params = {
        "area_fraction": round(area, 5),
        "covered_fraction": _covered(mask, (x0, y0, side)),
        "perlin_res": list(res),
        "threshold": round(threshold, 5),
        "opacity": round(alpha, 4),
        "texture": texture_info,
    }
    return out, mask, params


def occlusion(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    area_fraction: tuple[float, float] = (0.03, 0.12),
    shapes: Sequence[str] = ("polygon", "rectangle", "ellipse"),
    fills: Sequence[str] = ("solid", "texture"),
    bias_x: float = 0.4,
    bias_y: float = 0.5,
) -> FamilyResult:
    """Occlude part of the crop with a solid or textured blob, rectangle or ellipse.

    A solid fill's colour is the region's mean colour plus 64-192 levels per channel, modulo 256,
    so it differs clearly from what it covers even on a flat image; a textured fill is a
    :func:`procedural_texture`.

    Args:
        image: RGB ``[H, W, 3]`` uint8 frame (not modified).
        rng: the only source of randomness.
        area_fraction: range of the occluder's area as a share of the crop.
        shapes: to choose from: ``polygon`` (irregular 5-10-gon), ``rectangle`` (rotated,
            aspect 1:3 to 3:1), ``ellipse`` (rotated, same aspects).
        fills: to choose from: ``solid`` or ``texture``.
        bias_x: horizontal crop bias of the ETL job; the occluder stays inside its window.
        bias_y: vertical crop bias of the ETL job.

    Returns:
        ``(image [H, W, 3] uint8, mask [H, W] bool of the occluder, params)``.

    Raises:
        ValueError: a knob is out of range, or the image is not an RGB uint8 frame of at least 16 px.

    Example:
        >>> frame = np.full((96, 128, 3), 30, np.uint8)
        >>> out, mask, p = occlusion(frame, np.random.default_rng(4), fills=["solid"])
        >>> bool((out[mask] != 30).any(axis=1).all()), p["fill"]
        (True, 'solid')
    """
    family = "occlusion"
    window = _window(image, family, bias_x, bias_y)
    area_range = _pair(family, "area_fraction", area_fraction, 1e-4, 0.5)
    shapes = _choices(family, "shapes", shapes, ("polygon", "rectangle", "ellipse"))
    fills = _choices(family, "fills", fills, ("solid", "texture"))
    x0, y0, side = window

    area = rng.uniform(*area_range) * side * side
    shape = shapes[int(rng.integers(len(shapes)))]
    fill = fills[int(rng.integers(len(fills)))]
    info: dict = {"shape": shape, "fill": fill}
    if shape == "polygon":
        offsets, _ = _polygon(rng, area, side / 2 - 1)
        info["vertices"] = len(offsets)
    else:
        aspect = math.exp(rng.uniform(math.log(1 / 3), math.log(3)))
        theta = rng.uniform(0, np.pi)
        if shape == "rectangle":
            a, b = math.sqrt(area * aspect) / 2, math.sqrt(area / aspect) / 2  # half sides
            unit = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
        else:
            a, b = math.sqrt(area * aspect / np.pi), math.sqrt(area / aspect / np.pi)  # semi-axes
            t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
            unit = np.stack([a * np.cos(t), b * np.sin(t)], axis=1)
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        offsets = unit @ rot.T
        info.update(aspect_ratio=round(aspect, 4), angle_deg=round(math.degrees(theta), 2))
    reach = float(np.hypot(offsets[:, 0], offsets[:, 1]).max())
    if reach > side / 2 - 1:
        offsets = offsets * (side / 2 - 1) / reach
        reach = side / 2 - 1
    center = _place(rng, window, reach)
    mask = _fill(image.shape[:2], offsets, center)
    out = image.copy()
    if fill == "solid":
        colour = (np.round(image[mask].mean(axis=0)).astype(int) + rng.integers(64, 193, size=3)) % 256
        out[mask] = colour.astype(np.uint8)
        info["color"] = colour.tolist()
    else:
        texture, info["texture"] = procedural_texture(rng, side)
        out[mask] = texture[mask[y0 : y0 + side, x0 : x0 + side]]
    info.update(center=[round(center[0], 2), round(center[1], 2)], radius=round(reach, 2), covered_fraction=_covered(mask, window))
    return out, mask, info


def local_blur(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    area_fraction: tuple[float, float] = (0.04, 0.12),
    sigma_fraction: tuple[float, float] = (0.02, 0.05),
    candidates: int = 8,
    bias_x: float = 0.4,
    bias_y: float = 0.5,
) -> FamilyResult:
    """Blur an irregular region of the crop strongly (a Gaussian of 2-5 % of the crop side).

    Blur is invisible on flat content, so ``candidates`` regions are drawn and the one the blur
    changes most (mean absolute change) is kept: on real frames it lands on edges and texture,
    swans included (on the demo video 8 candidates hit the swan often enough; 4 left some
    copies all water). On a perfectly flat image nothing changes; that is the only input where
    this family is a no-op.

    Args:
        image: RGB ``[H, W, 3]`` uint8 frame (not modified).
        rng: the only source of randomness.
        area_fraction: range of the region's area as a share of the crop.
        sigma_fraction: range of the Gaussian's sigma as a share of the crop side; the default
            is at least 1.3 px at a 64-px model input, so the blur survives the downscale.
        candidates: number of regions to draw (1: plain uniform placement).
        bias_x: horizontal crop bias of the ETL job; the region stays inside its window.
        bias_y: vertical crop bias of the ETL job.

    Returns:
        ``(image [H, W, 3] uint8, mask [H, W] bool of the region, params)``.

    Raises:
        ValueError: a knob is out of range, or the image is not an RGB uint8 frame of at least 16 px.

    Example:
        >>> frame = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        >>> out, mask, p = local_blur(frame, np.random.default_rng(5))
        >>> bool((out != frame).any(axis=2)[mask].mean() > 0.9), p["candidates"]
        (True, 8)
    """
    family = "local_blur"
    window = _window(image, family, bias_x, bias_y)
    area_range = _pair(family, "area_fraction", area_fraction, 1e-4, 0.5)
    sigma_range = _pair(family, "sigma_fraction", sigma_fraction, 1e-3, 0.5)
    if not isinstance(candidates, int) or not 1 <= candidates <= 64:
        msg = f"{family}: candidates must be an int in [1, 64], got {candidates!r}"
        raise ValueError(msg)
    h, w = image.shape[:2]
    x0, y0, side = window

    sigma = max(0.5, rng.uniform(*sigma_range) * side)
    pad = math.ceil(3 * sigma)  # blur real neighbours across the crop's edge where the frame has them
    px0, py0 = max(0, x0 - pad), max(0, y0 - pad)
    padded = cv2.GaussianBlur(image[py0 : y0 + side + pad, px0 : x0 + side + pad], (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    blurred = padded[y0 - py0 : y0 - py0 + side, x0 - px0 : x0 - px0 + side]
    crop = image[y0 : y0 + side, x0 : x0 + side]
    change = np.abs(blurred.astype(np.int16) - crop.astype(np.int16)).mean(axis=2)
    area = rng.uniform(*area_range)
    best: tuple[float, int, np.ndarray, dict] | None = None
    for k in range(candidates):
        mask, info = _region(rng, (h, w), window, area)
        score = float(change[mask[y0 : y0 + side, x0 : x0 + side]].mean())
        if best is None or score > best[0]:
            best = (score, k, mask, info)
    score, chosen, mask, info = best
    out = image.copy()
    inside = mask[y0 : y0 + side, x0 : x0 + side]
    out[y0 : y0 + side, x0 : x0 + side][inside] = blurred[inside]
    params = {
        "area_fraction": round(area, 5),
        "covered_fraction": _covered(mask, window),
        "sigma_px": round(sigma, 3),
        "candidates": candidates,
        "chosen": chosen,
        "mean_abs_change": round(score, 3),
        **info,
    }
    return out, mask, params


def color_shift(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    area_fraction: tuple[float, float] = (0.04, 0.12),
    hue_shift: tuple[float, float] = (15.0, 60.0),
    saturation_shift: tuple[float, float] = (40.0, 120.0),
    value_shift: tuple[float, float] = (20.0, 60.0),
    bias_x: float = 0.4,
    bias_y: float = 0.5,
) -> FamilyResult:
    """Shift hue, saturation and value inside an irregular region (OpenCV 8-bit HSV).

    Hue turns by the drawn amount in a random direction. Saturation and value shifts have a
    random sign, flipped where the region's mean would leave ``[0, 255]``: a grey or white region
    gains saturation and a white one darkens, so the shift is visible on any image.

    Args:
        image: RGB ``[H, W, 3]`` uint8 frame (not modified).
        rng: the only source of randomness.
        area_fraction: range of the region's area as a share of the crop.
        hue_shift: range of the hue rotation's magnitude in OpenCV units (0-90; 1 unit = 2 degrees).
        saturation_shift: range of the saturation shift's magnitude (levels of 255).
        value_shift: range of the value shift's magnitude (levels of 255).
        bias_x: horizontal crop bias of the ETL job; the region stays inside its window.
        bias_y: vertical crop bias of the ETL job.

    Returns:
        ``(image [H, W, 3] uint8, mask [H, W] bool of the region, params)``.

    Raises:
        ValueError: a knob is out of range, or the image is not an RGB uint8 frame of at least 16 px.

    Example:
        >>> frame = np.full((96, 128, 3), 128, np.uint8)
        >>> out, mask, p = color_shift(frame, np.random.default_rng(6))
        >>> p["saturation_shift"] > 0, bool((out != frame).any(axis=2)[mask].all())
        (True, True)
    """
    family = "color_shift"
    window = _window(image, family, bias_x, bias_y)
    area_range = _pair(family, "area_fraction", area_fraction, 1e-4, 0.5)
    hue_range = _pair(family, "hue_shift", hue_shift, 0.0, 90.0)
    sat_range = _pair(family, "saturation_shift", saturation_shift, 0.0, 255.0)
    val_range = _pair(family, "value_shift", value_shift, 0.0, 255.0)

    area = rng.uniform(*area_range)
    mask, info = _region(rng, image.shape[:2], window, area)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    mean_s, mean_v = hsv[mask][:, 1].mean(), hsv[mask][:, 2].mean()
    dh = rng.uniform(*hue_range) * (1.0 if rng.random() < 0.5 else -1.0)
    ds = _signed(rng, sat_range, float(mean_s), 255.0)
    dv = _signed(rng, val_range, float(mean_v), 255.0)
    hsv[..., 0] = np.mod(np.round(hsv[..., 0] + dh), 180.0)
    hsv[..., 1:] = np.clip(np.round(hsv[..., 1:] + (ds, dv)), 0, 255)
    shifted = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    out = image.copy()
    out[mask] = shifted[mask]
    params = {
        "area_fraction": round(area, 5),
        "covered_fraction": _covered(mask, window),
        "hue_shift": round(dh, 3),
        "saturation_shift": round(ds, 3),
        "value_shift": round(dv, 3),
        **info,
    }
    return out, mask, params


#: Family name -> ``fn(image, rng, *, bias_x, bias_y, **knobs) -> (image, mask, params)``.
FAMILIES: dict[str, Callable[..., FamilyResult]] = {
    "salt_pepper_polygons": salt_pepper_polygons,
    "cutpaste": cutpaste,
    "perlin_texture": perlin_texture,
    "occlusion": occlusion,
    "local_blur": local_blur,
    "color_shift": color_shift,
}


def family_knobs(family: str, overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """The knobs a family runs with: its keyword defaults updated by ``overrides``.

    Args:
        family: a key of :data:`FAMILIES`.
        overrides: knob values to use instead of the defaults.

    Returns:
        ``{knob: value}``, JSON-serialisable (tuples become lists in JSON).

    Raises:
        ValueError: an unknown family, an unknown knob (the message lists the known ones), or a
            value that JSON cannot record.

    Example:
        >>> family_knobs("local_blur", {"candidates": 1})["candidates"]
        1
    """
    _check_families([family])
    accepted = {n: p.default for n, p in inspect.signature(FAMILIES[family]).parameters.items() if p.kind is p.KEYWORD_ONLY}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        msg = f"unknown knob(s) {unknown} for anomaly family {family!r}; known: {sorted(accepted)}"
        raise ValueError(msg)
    knobs = {**accepted, **overrides}
    try:
        json.dumps(knobs)
    except TypeError as exc:
        msg = f"knobs of anomaly family {family!r} must be JSON-serialisable to be recorded: {exc}"
        raise ValueError(msg) from None
    return knobs


def _check_families(families: Sequence[str]) -> tuple[str, ...]:
    """Validate a non-empty, duplicate-free selection of :data:`FAMILIES`."""
    names = (families,) if isinstance(families, str) else tuple(families)
    unknown = [f for f in names if f not in FAMILIES]
    if unknown:
        msg = f"unknown anomaly family {unknown[0]!r}; known: {sorted(FAMILIES)}"
        raise ValueError(msg)
    if not names or len(set(names)) != len(names):
        msg = f"families must be a non-empty list of distinct names from {sorted(FAMILIES)}, got {list(names)}"
        raise ValueError(msg)
    return names


def _resolve(families: Sequence[str], family_kwargs: Mapping[str, Mapping[str, object]] | None) -> dict[str, dict]:
    """``{family: effective knobs}`` for the chosen families; knobs for other families are an error."""
    names = _check_families(families)
    stray = sorted(set(family_kwargs or {}) - set(names))
    if stray:
        msg = f"family_kwargs given for {stray}, which are not among the chosen families {list(names)}"
        raise ValueError(msg)
    return {name: family_knobs(name, (family_kwargs or {}).get(name)) for name in names}


def _assign_families(n: int, families: Sequence[str], seed: int) -> list[str]:
    """Seeded, balanced family per anomalous copy: each family gets ``floor(n / k)`` or ``ceil(n / k)``."""
    rng = np.random.default_rng(stable_seed(seed, "families", *families))
    order = rng.permutation(len(families))  # which families get the remainder
    labels = [families[order[i % len(families)]] for i in range(n)]
    return [labels[i] for i in rng.permutation(n)]


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


@dataclass(frozen=True)
class AnomalyRecord:
    """One synthetic anomalous image derived from a normal frame."""

    video_id: str
    frame_index: int
    timestamp_s: float
    family: str
    family_params: str  # JSON
    path: str  # relative to the dataset directory


def plan_anomalies(n_frames: int, anomaly_ratio: float, seed: int) -> list[tuple[int, int]]:
    """Choose which frames get anomalous copies so that abnormal / all == ``anomaly_ratio``.

    Every frame stays in the set as a normal image; ``round(n * r / (1 - r))`` anomalous
    copies are spread over a seeded permutation of the frames (a frame gets a second copy
    only when the ratio exceeds 0.5).

    Returns:
        ``(frame position, variant number)`` pairs.
    """
    if not 0.0 < anomaly_ratio < 1.0:
        msg = f"anomaly_ratio must be in (0, 1), got {anomaly_ratio}"
        raise ValueError(msg)
    n_abnormal = round(n_frames * anomaly_ratio / (1.0 - anomaly_ratio))
    order = np.random.default_rng(seed).permutation(n_frames)
    return [(int(order[i % n_frames]), i // n_frames) for i in range(n_abnormal)]


def synthesize_dataset(
    frames: list[dict],
    dataset_dir: Path,
    *,
    anomaly_ratio: float,
    seed: int,
    families: Sequence[str] | None = None,
    family_kwargs: Mapping[str, Mapping[str, object]] | None = None,
) -> list[AnomalyRecord]:
    """Write anomalous copies of frames under ``dataset_dir/anomalies/{video_id}/``.

    The copies are spread over ``families`` in seeded, balanced counts (each of ``k`` families
    gets ``floor(n / k)`` or ``ceil(n / k)`` of the ``n`` copies). Each record's ``family_params``
    is the JSON of the family's drawn parameters plus ``"knobs"``, the knobs it ran with.

    Args:
        frames: frame records (``video_id``, ``frame_index``, ``timestamp_s``, ``path``), in a stable order.
        dataset_dir: the staging directory of the dataset.
        anomaly_ratio: wanted share of abnormal images in the dataset.
        seed: run seed; each image's randomness is derived from it and the frame identity.
        families: keys of :data:`FAMILIES` (default :data:`DEFAULT_FAMILIES`).
        family_kwargs: knobs per family name, e.g. ``{"local_blur": {"candidates": 1}}``.

    Returns:
        One record per anomalous image.

    Raises:
        ValueError: a bad ratio, an unknown or repeated family, knobs for a family not chosen,
            or an unknown knob.

    Example:
        >>> records = synthesize_dataset(frames, Path("/tmp/ds"), anomaly_ratio=0.2, seed=7,
        ...                              families=["cutpaste", "occlusion"])  # doctest: +SKIP
    """
    knobs = _resolve(DEFAULT_FAMILIES if families is None else families, family_kwargs)
    frames = sorted(frames, key=lambda f: (f["video_id"], f["frame_index"]))
    plan = plan_anomalies(len(frames), anomaly_ratio, seed)
    records = []
    for (pos, variant), family in zip(plan, _assign_families(len(plan), tuple(knobs), seed)):
        frame = frames[pos]
        rng = np.random.default_rng(stable_seed(seed, family, frame["video_id"], frame["frame_index"], variant))
        image = decode_image(Path(frame["path"]).read_bytes(), name=frame["path"])
        out, _, params = FAMILIES[family](image, rng, **knobs[family])
        rel = Path("anomalies") / frame["video_id"] / f"frame_{frame['frame_index']:05d}_{family}_{variant}.png"
        (dataset_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (dataset_dir / rel).write_bytes(encode_png(out))
        family_params = json.dumps({**params, "knobs": knobs[family]}, sort_keys=True)
        records.append(AnomalyRecord(frame["video_id"], frame["frame_index"], frame["timestamp_s"], family, family_params, str(rel)))
    counts = dict(sorted(Counter(r.family for r in records).items()))
    log.info("synthesized %d anomalies %s from %d frames (ratio %.2f, seed %d)", len(records), counts, len(frames), anomaly_ratio, seed)
    return records
