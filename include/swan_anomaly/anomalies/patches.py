"""Families that paste content into the crop: a copy of the frame, a foreign texture, an occluder.

* :func:`cutpaste`: a rectangle of the frame copied elsewhere, maybe rotated, with a brightness jitter;
* :func:`perlin_texture`: a procedural texture blended in through a thresholded Perlin-noise mask;
* :func:`occlusion`: a solid or textured polygon, rotated rectangle or ellipse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from swan_anomaly.anomalies.checks import FamilyResult, _choices, _pair, _signed, _window
from swan_anomaly.anomalies.geometry import _covered, _fill, _place, _polygon
from swan_anomaly.anomalies.textures import TEXTURE_KINDS, perlin_noise, procedural_texture
from swan_anomaly.contract import CROP_BIAS_X, CROP_BIAS_Y


def cutpaste(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    area_fraction: tuple[float, float] = (0.04, 0.12),
    aspect_ratio: tuple[float, float] = (0.3, 3.3),
    rotate_prob: float = 0.5,
    max_angle: float = 45.0,
    brightness: tuple[float, float] = (10.0, 30.0),
    bias_x: float = CROP_BIAS_X,
    bias_y: float = CROP_BIAS_Y,
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
    bias_x: float = CROP_BIAS_X,
    bias_y: float = CROP_BIAS_Y,
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
    bias_x: float = CROP_BIAS_X,
    bias_y: float = CROP_BIAS_Y,
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
