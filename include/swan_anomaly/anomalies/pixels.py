"""Families that alter the frame's own pixels inside a region: impulse noise, blur, colour.

* :func:`salt_pepper_polygons`: salt and pepper patches in a central region and edge bands;
* :func:`local_blur`: a strong Gaussian blur inside an irregular polygon;
* :func:`color_shift`: a hue, saturation and value shift inside an irregular polygon.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from swan_anomaly.anomalies.checks import FamilyResult, _pair, _signed, _window
from swan_anomaly.anomalies.geometry import _covered, _fill, _place, _polygon, _region
from swan_anomaly.contract import CROP_BIAS_X, CROP_BIAS_Y

#: Placement zones of :func:`salt_pepper_polygons`: the central region, then the four edge bands.
ZONES = ("center", "top", "bottom", "left", "right")


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
    bias_x: float = CROP_BIAS_X,
    bias_y: float = CROP_BIAS_Y,
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


def local_blur(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    area_fraction: tuple[float, float] = (0.04, 0.12),
    sigma_fraction: tuple[float, float] = (0.02, 0.05),
    candidates: int = 8,
    bias_x: float = CROP_BIAS_X,
    bias_y: float = CROP_BIAS_Y,
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
    bias_x: float = CROP_BIAS_X,
    bias_y: float = CROP_BIAS_Y,
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
