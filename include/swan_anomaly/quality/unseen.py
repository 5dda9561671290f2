"""Anomaly kinds the model never trains on: the quality benchmark's test of generalisation.

None of these is a training family (:data:`swan_anomaly.anomalies.FAMILIES`), and nothing in the
pipeline uses them: the benchmark (``bench/quality.py``) applies them to the test split's normal
frames only. Each differs in kind from the six training families:

* ``foreign_object``: an object cut from *another* bundled photograph (a face, a cat's face, a
  coin, a camera, a helmet) pasted with a soft alpha edge, 8-20 % of the crop side;
* ``glare``: a lens flare, a saturated warm-white core with a wide soft halo and a few rays;
* ``scratch``: thin dark or bright curved lines, as on a dirty or scratched lens;
* ``pixelation``: a rectangle block-quantised as by a codec error (macroblocks, fewer colours);
* ``tear``: a horizontal band shifted sideways, as in frame tearing.

Every kind has the families' call shape, ``fn(image, rng, *, bias_x, bias_y, **knobs) -> (out,
mask, params)`` (:data:`swan_anomaly.anomalies.FamilyResult`): ``image`` an RGB ``[H, W, 3]``
uint8 frame, as frames are decoded everywhere in the pipeline (never modified), ``rng`` the
only source of randomness, ``mask`` exactly the pixels that may change, all of them inside the
centre-biased square crop the model sees, and ``params`` every value drawn (JSON-serialisable).

Example:
    >>> import numpy as np
    >>> frame = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    >>> out, mask, params = tear(frame, np.random.default_rng(1))
    >>> bool(((out != frame).any(axis=2) & ~mask).any()), params["band_height"] > 0
    (False, True)
    >>> sorted(set(UNSEEN_KINDS) & set(FAMILIES))
    []
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from swan_anomaly.anomalies import FAMILIES, FamilyResult
from swan_anomaly.anomalies.checks import _choices, _pair, _window
from swan_anomaly.anomalies.geometry import _covered, _place
from swan_anomaly.contract import CROP_BIAS_X, CROP_BIAS_Y
from swan_anomaly.quality.footage import load_photo

#: Objects :func:`foreign_object` pastes: name -> (bundled photo, box ``(x0, y0, x1, y1)`` in its pixels).
#: None of these photos is a benchmark scene (:data:`swan_anomaly.quality.footage.PHOTOS`).
FOREIGN_OBJECTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "astronaut_face": ("astronaut", (150, 20, 305, 200)),
    "mission_patch": ("astronaut", (130, 345, 215, 430)),
    "helmet": ("astronaut", (275, 340, 512, 512)),
    "cat_face": ("chelsea", (90, 40, 360, 290)),
    "cameraman": ("camera", (150, 60, 340, 240)),
    "coin": ("coins", (300, 8, 380, 88)),
}


def _blend(image: np.ndarray, layer: np.ndarray, alpha: np.ndarray, top_left: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with ``layer`` (float RGB) blended in at ``top_left`` by ``alpha`` (``[h, w]`` in [0, 1]).

    Returns the copy and the mask of the pixels where ``alpha`` is not zero (only those may change).
    """
    x, y = top_left
    h, w = alpha.shape
    out = image.copy()
    region = image[y : y + h, x : x + w].astype(np.float32)
    a = alpha[..., None].astype(np.float32)
    out[y : y + h, x : x + w] = np.clip(np.round(region + a * (layer - region)), 0, 255).astype(np.uint8)
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[y : y + h, x : x + w] = alpha > 0
    return out, mask


def foreign_object(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    size_fraction: tuple[float, float] = (0.08, 0.20),
    objects: Sequence[str] = tuple(FOREIGN_OBJECTS),
    feather: tuple[float, float] = (0.08, 0.2),
    bias_x: float = CROP_BIAS_X,
    bias_y: float = CROP_BIAS_Y,
) -> FamilyResult:
    """Paste an object cut from another bundled photograph, an ellipse with a soft alpha edge.

    Args:
        image: RGB ``[H, W, 3]`` uint8 frame (not modified).
        rng: the only source of randomness.
        size_fraction: range of the object's longer side as a share of the crop side.
        objects: keys of :data:`FOREIGN_OBJECTS` to choose from.
        feather: range of the soft edge's width as a share of the object's shorter side.
        bias_x: horizontal crop bias; the object stays inside the crop.
        bias_y: vertical crop bias.

    Returns:
        ``(image, mask of the pasted object, params)``.

    Raises:
        ValueError: a knob is out of range, or the image is not an RGB uint8 frame of at least 16 px.
        ModuleNotFoundError: scikit-image (which holds the photos) is not installed.
    """
    kind = "foreign_object"
    x0, y0, side = _window(image, kind, bias_x, bias_y)
    size_range = _pair(kind, "size_fraction", size_fraction, 0.01, 1.0)
    feather_range = _pair(kind, "feather", feather, 0.0, 0.5)
    objects = _choices(kind, "objects", objects, tuple(FOREIGN_OBJECTS))

    name = objects[int(rng.integers(len(objects)))]
    photo, (bx0, by0, bx1, by1) = FOREIGN_OBJECTS[name]
    cut = cv2.cvtColor(np.ascontiguousarray(load_photo(photo)[by0:by1, bx0:bx1]), cv2.COLOR_BGR2RGB)
    flipped = bool(rng.random() < 0.5)
    if flipped:
        cut = cut[:, ::-1]
    longer = max(4, round(rng.uniform(*size_range) * side))
    scale = longer / max(cut.shape[:2])
    w, h = max(4, round(cut.shape[1] * scale)), max(4, round(cut.shape[0] * scale))
    obj = cv2.resize(np.ascontiguousarray(cut), (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    # a soft ellipse: drawn inside the box at supersampled resolution, then blurred by the feather width
    edge = rng.uniform(*feather_range) * min(w, h)
    ss = 4
    ellipse = np.zeros((h * ss, w * ss), np.uint8)
    axes = (max(1, round((w / 2 - edge / 2) * ss)), max(1, round((h / 2 - edge / 2) * ss)))
    cv2.ellipse(ellipse, (round(w * ss / 2), round(h * ss / 2)), axes, 0, 0, 360, 255, -1)
    alpha = cv2.resize(ellipse, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    if edge >= 0.5:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=edge / 2.5)
    alpha[alpha < 0.01] = 0.0
    px, py = x0 + int(rng.integers(0, side - w + 1)), y0 + int(rng.integers(0, side - h + 1))
    out, mask = _blend(image, obj.astype(np.float32), alpha, (px, py))
    params = {
        "object": name,
        "photo": photo,
        "box": [bx0, by0, bx1, by1],
        "flipped": flipped,
        "size": [w, h],
        "size_fraction": round(longer / side, 5),
        "position": [px, py],
        "feather_px": round(edge, 3),
        "covered_fraction": _covered(mask, (x0, y0, side)),
    }
    return out, mask, params


def glare(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    core_fraction: tuple[float, float] = (0.03, 0.07),
    halo_scale: tuple[float, float] = (2.5, 4.0),
    strength: tuple[float, float] = (0.8, 1.0),
    rays: tuple[int, int] = (0, 6),
    bias_x: float = CROP_BIAS_X,
    bias_y: float = CROP_BIAS_Y,
) -> FamilyResult:
    """A lens flare: a saturated warm-white core, a wide soft halo and a few thin rays, added to the light.

    Args:
        image: RGB ``[H, W, 3]`` uint8 frame (not modified).
        rng: the only source of randomness.
        core_fraction: range of the core's radius as a share of the crop side.
        halo_scale: range of the halo's reach in core radii (capped to fit in the crop).
        strength: range of the flare's opacity at its centre.
        rays: inclusive range of the number of rays.
        bias_x: horizontal crop bias; the whole flare, halo included, stays inside the crop.
        bias_y: vertical crop bias.

    Returns:
        ``(image, mask of the pixels the flare reaches, params)``.

    Example:
        >>> frame = np.full((96, 128, 3), 40, np.uint8)
        >>> out, mask, p = glare(frame, np.random.default_rng(0))
        >>> int(out[mask].max()) > 200, bool((out[~mask] == 40).all())
        (True, True)
    """
    kind = "glare"
    window = _window(image, kind, bias_x, bias_y)
    x0, y0, side = window
    core_range = _pair(kind, "core_fraction", core_fraction, 0.005, 0.3)
    halo_range = _pair(kind, "halo_scale", halo_scale, 1.0, 20.0)
    strength_range = _pair(kind, "strength", strength, 0.0, 1.0)
    ray_range = _pair(kind, "rays", rays, 0, 16)

    core = rng.uniform(*core_range) * side
    reach = min(core * rng.uniform(*halo_range), side / 2 - 2)
    cx, cy = _place(rng, window, reach)
    peak = rng.uniform(*strength_range)
    n_rays = int(rng.integers(int(ray_range[0]), int(ray_range[1]) + 1))
    angles = rng.uniform(0, np.pi, size=n_rays)  # each ray goes both ways
    tint = np.array([255.0, rng.uniform(235, 255), rng.uniform(200, 245)], np.float32)  # warm white

    left, top = max(x0, math.floor(cx - reach)), max(y0, math.floor(cy - reach))
    right, bottom = min(x0 + side, math.ceil(cx + reach) + 1), min(y0 + side, math.ceil(cy + reach) + 1)
    yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    dist = np.hypot(dx, dy)
    light = np.exp(-((dist / core) ** 4)) + 0.45 * np.exp(-0.5 * (dist / (reach / 2.5)) ** 2)
    width = max(0.8, core / 6)
    for theta in angles:
        across = np.abs(-dx * math.sin(theta) + dy * math.cos(theta))
        light += 0.5 * np.exp(-0.5 * (across / width) ** 2) * np.exp(-dist / (reach / 2))
    alpha = np.clip(peak * light, 0, 1) * (dist <= reach)
    alpha[alpha < 0.004] = 0.0
    out, mask = _blend(image, np.broadcast_to(tint, (*alpha.shape, 3)), alpha, (left, top))
    params = {
        "center": [round(cx, 2), round(cy, 2)],
        "core_radius": round(core, 3),
        "reach": round(reach, 3),
        "strength": round(peak, 4),
        "rays": n_rays,
        "ray_angles_deg": [round(math.degrees(a), 2) for a in angles],
        "tint": [round(float(c), 1) for c in tint],
        "covered_fraction": _covered(mask, window),
    }
    return out, mask, params


def scratch(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    count: tuple[int, int] = (1, 4),
    length_fraction: tuple[float, float] = (0.3, 0.8),
    width_fraction: tuple[float, float] = (0.008, 0.02),
    tones: Sequence[str] = ("dark", "bright"),
    opacity: tuple[float, float] = (0.7, 1.0),
    bias_x: float = CROP_BIAS_X,
    bias_y: float = CROP_BIAS_Y,
) -> FamilyResult:
    """Thin curved lines, dark or bright, as on a dirty or scratched lens (quadratic Bezier curves, anti-aliased).

    Args:
        image: RGB ``[H, W, 3]`` uint8 frame (not modified).
        rng: the only source of randomness.
        count: inclusive range of the number of scratches.
        length_fraction: range of a scratch's chord as a share of the crop side.
        width_fraction: range of a scratch's width as a share of the crop side (at least 1 px).
        tones: to choose from per scratch: ``dark`` (grey 0-40) or ``bright`` (grey 215-255).
        opacity: range of a scratch's opacity.
        bias_x: horizontal crop bias; the scratches stay inside the crop.
        bias_y: vertical crop bias.

    Returns:
        ``(image, mask of the scratched pixels, params)``.
    """
    kind = "scratch"
    window = _window(image, kind, bias_x, bias_y)
    x0, y0, side = window
    count_range = _pair(kind, "count", count, 1, 16)
    length_range = _pair(kind, "length_fraction", length_fraction, 0.05, 1.0)
    width_range = _pair(kind, "width_fraction", width_fraction, 0.0, 0.1)
    opacity_range = _pair(kind, "opacity", opacity, 0.0, 1.0)
    tones = _choices(kind, "tones", tones, ("dark", "bright"))

    out = image.copy()
    mask = np.zeros(image.shape[:2], dtype=bool)
    t = np.linspace(0, 1, 64)[:, None]
    lines = []
    for _ in range(int(rng.integers(int(count_range[0]), int(count_range[1]) + 1))):
        length = rng.uniform(*length_range) * side
        angle = rng.uniform(0, np.pi)
        direction = np.array([math.cos(angle), math.sin(angle)])
        mid = np.array(_place(rng, window, length / 2))
        bend = rng.uniform(-0.3, 0.3) * length
        p0, p2 = mid - direction * length / 2, mid + direction * length / 2
        p1 = mid + np.array([-direction[1], direction[0]]) * bend
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        curve = np.clip(curve, (x0 + 1, y0 + 1), (x0 + side - 2, y0 + side - 2))
        thickness = max(1, round(rng.uniform(*width_range) * side))
        tone = tones[int(rng.integers(len(tones)))]
        grey = rng.uniform(0, 40) if tone == "dark" else rng.uniform(215, 255)
        alpha_max = rng.uniform(*opacity_range)
        canvas = np.zeros((side, side), np.uint8)
        points = np.round((curve - (x0, y0)) * 16).astype(np.int32)  # 4 fractional bits
        cv2.polylines(canvas, [points], False, 255, thickness=thickness, lineType=cv2.LINE_AA, shift=4)
        alpha = canvas.astype(np.float32) / 255 * alpha_max
        out, drawn = _blend(out, np.full((side, side, 3), grey, np.float32), alpha, (x0, y0))
        mask |= drawn
        lines.append(
            {
                "tone": tone,
                "grey": round(grey, 1),
                "opacity": round(alpha_max, 4),
                "thickness": thickness,
                "length": round(length, 2),
                "bend": round(bend, 2),
                "start": [round(float(v), 2) for v in curve[0]],
                "end": [round(float(v), 2) for v in curve[-1]],
            }
        )
    return out, mask, {"n_scratches": len(lines), "scratches": lines, "covered_fraction": _covered(mask, window)}


def pixelation(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    area_fraction: tuple[float, float] = (0.05, 0.15),
    block_fraction: tuple[float, float] = (0.035, 0.07),
    aspect_ratio: tuple[float, float] = (0.5, 2.0),
    quantize_prob: float = 0.5,
    bias_x: float = CROP_BIAS_X,
    bias_y: float = CROP_BIAS_Y,
) -> FamilyResult:
    """A rectangle block-quantised as by a codec error: each block its mean colour, maybe fewer colour levels.

    A flat region has nothing to quantise; on real frames the blocks are plain to see.

    Args:
        image: RGB ``[H, W, 3]`` uint8 frame (not modified).
        rng: the only source of randomness.
        area_fraction: range of the rectangle's area as a share of the crop (before snapping to whole blocks).
        block_fraction: range of the block side as a share of the crop side (at least 2 px).
        aspect_ratio: range of the rectangle's width / height.
        quantize_prob: probability that the blocks are also reduced to 6-16 levels per channel.
        bias_x: horizontal crop bias; the rectangle stays inside the crop.
        bias_y: vertical crop bias.

    Returns:
        ``(image, mask of the rectangle, params)``.
    """
    kind = "pixelation"
    window = _window(image, kind, bias_x, bias_y)
    x0, y0, side = window
    area_range = _pair(kind, "area_fraction", area_fraction, 1e-3, 0.8)
    block_range = _pair(kind, "block_fraction", block_fraction, 0.0, 0.25)
    aspect_range = _pair(kind, "aspect_ratio", aspect_ratio, 0.1, 10.0)
    if not 0.0 <= quantize_prob <= 1.0:
        msg = f"{kind}: quantize_prob must be in [0, 1], got {quantize_prob!r}"
        raise ValueError(msg)

    block = max(2, round(rng.uniform(*block_range) * side))
    area = rng.uniform(*area_range) * side * side
    aspect = math.exp(rng.uniform(math.log(aspect_range[0]), math.log(aspect_range[1])))
    bw = min(side // block, max(1, round(math.sqrt(area * aspect) / block)))
    bh = min(side // block, max(1, round(math.sqrt(area / aspect) / block)))
    w, h = bw * block, bh * block
    px, py = x0 + int(rng.integers(0, side - w + 1)), y0 + int(rng.integers(0, side - h + 1))
    region = image[py : py + h, px : px + w]
    blocks = cv2.resize(region, (bw, bh), interpolation=cv2.INTER_AREA)
    levels = None
    if rng.random() < quantize_prob:
        levels = int(rng.integers(6, 17))
        step = 256 / levels
        blocks = np.clip(np.floor(blocks / step) * step + step / 2, 0, 255).astype(np.uint8)
    out = image.copy()
    out[py : py + h, px : px + w] = cv2.resize(blocks, (w, h), interpolation=cv2.INTER_NEAREST)
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[py : py + h, px : px + w] = True
    params = {
        "block": block,
        "blocks": [bw, bh],
        "rectangle": [px, py, w, h],
        "levels": levels,
        "covered_fraction": _covered(mask, window),
    }
    return out, mask, params


def tear(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    band_fraction: tuple[float, float] = (0.08, 0.2),
    shift_fraction: tuple[float, float] = (0.08, 0.25),
    bias_x: float = CROP_BIAS_X,
    bias_y: float = CROP_BIAS_Y,
) -> FamilyResult:
    """Frame tearing: a horizontal band of the frame shifted sideways (the row wraps around the frame).

    Only the band's part inside the crop is written (the model sees nothing else), so the mask is a
    rectangle as wide as the crop.

    Args:
        image: RGB ``[H, W, 3]`` uint8 frame (not modified).
        rng: the only source of randomness.
        band_fraction: range of the band's height as a share of the crop side.
        shift_fraction: range of the sideways shift as a share of the crop side (either direction).
        bias_x: horizontal crop bias.
        bias_y: vertical crop bias; the band lies inside the crop.

    Returns:
        ``(image, mask of the band inside the crop, params)``.
    """
    kind = "tear"
    window = _window(image, kind, bias_x, bias_y)
    x0, y0, side = window
    band_range = _pair(kind, "band_fraction", band_fraction, 0.01, 1.0)
    shift_range = _pair(kind, "shift_fraction", shift_fraction, 0.01, 1.0)

    band = max(1, round(rng.uniform(*band_range) * side))
    top = y0 + int(rng.integers(0, side - band + 1))
    shift = max(1, round(rng.uniform(*shift_range) * side)) * (1 if rng.random() < 0.5 else -1)
    shifted = np.roll(image[top : top + band], shift, axis=1)
    out = image.copy()
    out[top : top + band, x0 : x0 + side] = shifted[:, x0 : x0 + side]
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[top : top + band, x0 : x0 + side] = True
    return out, mask, {"band_top": top, "band_height": band, "shift": shift, "covered_fraction": _covered(mask, window)}


#: Kind name -> ``fn(image, rng, *, bias_x, bias_y, **knobs) -> (image, mask, params)``; disjoint from the training families.
UNSEEN_KINDS: dict[str, Callable[..., FamilyResult]] = {
    "foreign_object": foreign_object,
    "glare": glare,
    "scratch": scratch,
    "pixelation": pixelation,
    "tear": tear,
}

assert not set(UNSEEN_KINDS) & set(FAMILIES), "an unseen kind must never be a training family"
