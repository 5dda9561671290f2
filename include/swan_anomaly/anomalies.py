"""Synthetic anomaly families: pure, seeded functions on RGB frames.

Anomalies are injected into the lossless frame (PNG), before any JPEG encoding. Normal and
abnormal images then go through exactly the same pipeline (one JPEG encode in the ETL job),
so the model cannot learn compression artefacts instead of the anomaly.

Families:
    ``salt_pepper_polygons``: several irregular 5-10-gons filled with salt (255) and
    pepper (0) impulse noise, placed inside the region the ETL crop keeps.

Example:
    >>> import numpy as np
    >>> frame = np.full((240, 320, 3), 120, dtype=np.uint8)
    >>> out, mask, params = salt_pepper_polygons(frame, np.random.default_rng(0))
    >>> out.shape == frame.shape and bool(mask.any()) and params["n_regions"] >= 2
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from swan_anomaly.images import crop_window, decode_image, encode_png

log = logging.getLogger(__name__)

NORMAL_FAMILY = "none"


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from a stable key (sha256, not ``hash()``, which is salted per process)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _irregular_polygon(rng: np.random.Generator, center: tuple[float, float], radius: float) -> np.ndarray:
    """A star-shaped (hence simple) polygon with 5-10 vertices around ``center``: ``[N, 2]`` int32."""
    n = int(rng.integers(5, 11))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
    radii = radius * rng.uniform(0.45, 1.0, size=n)
    pts = np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], axis=1)
    return np.round(pts).astype(np.int32)


def salt_pepper_polygons(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    n_regions: tuple[int, int] = (2, 4),
    radius_fraction: tuple[float, float] = (0.08, 0.16),
    density: float = 0.8,
    salt_share: float = 0.5,
    grain: int | None = None,
    bias_x: float = 0.4,
    bias_y: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fill several irregular polygons with salt-and-pepper noise.

    Args:
        image: RGB ``[H, W, 3]`` uint8 frame (not modified).
        rng: the only source of randomness.
        n_regions: inclusive range of the number of polygons.
        radius_fraction: polygon radius range as a fraction of the crop side.
        density: share of the pixels inside a polygon that become salt or pepper.
        salt_share: share of those noisy pixels set to 255 (the rest to 0).
        grain: edge of a noise grain in pixels (default: crop side / 72, at least 1). Grains
            of about ``frame side / model input side`` survive the ETL's downscaling;
            one-pixel noise would average out into a smooth grey blob.
        bias_x: horizontal crop bias of the ETL job; polygons stay inside its window.
        bias_y: vertical crop bias of the ETL job.

    Returns:
        ``(anomalous image [H, W, 3] uint8, mask [H, W] bool, recorded parameters)``.
    """
    h, w = image.shape[:2]
    x0, y0, side = crop_window(h, w, bias_x=bias_x, bias_y=bias_y)
    grain = grain or max(1, round(side / 72))
    count = int(rng.integers(n_regions[0], n_regions[1] + 1))
    region_mask = np.zeros((h, w), dtype=np.uint8)
    polygons = []
    for _ in range(count):
        radius = side * rng.uniform(*radius_fraction)
        margin = radius + 1  # vertices lie within `radius` of the centre
        cx = rng.uniform(x0 + margin, x0 + side - margin)
        cy = rng.uniform(y0 + margin, y0 + side - margin)
        poly = _irregular_polygon(rng, (cx, cy), radius)
        cv2.fillPoly(region_mask, [poly], 1)
        polygons.append(poly.tolist())
    inside = region_mask.astype(bool)
    gh, gw = -(-h // grain), -(-w // grain)
    draw = rng.random((2, gh, gw))
    if grain > 1:
        draw = draw.repeat(grain, axis=1).repeat(grain, axis=2)[:, :h, :w]
    noisy = inside & (draw[0] < density)
    salt = noisy & (draw[1] < salt_share)
    pepper = noisy & ~salt
    out = image.copy()
    out[salt] = 255
    out[pepper] = 0
    params = {
        "n_regions": count,
        "density": density,
        "salt_share": salt_share,
        "grain": grain,
        "area_fraction": round(float(inside.mean()), 5),
        "vertices": [len(p) for p in polygons],
    }
    return out, noisy, params


#: Family name -> function(image, rng) -> (image, mask, params).
FAMILIES: dict[str, Callable[..., tuple[np.ndarray, np.ndarray, dict]]] = {
    "salt_pepper_polygons": salt_pepper_polygons,
}


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
    frames: list[dict], dataset_dir: Path, *, anomaly_ratio: float, seed: int, family: str = "salt_pepper_polygons", **family_kwargs
) -> list[AnomalyRecord]:
    """Write anomalous copies of frames under ``dataset_dir/anomalies/{video_id}/``.

    Args:
        frames: frame records (``video_id``, ``frame_index``, ``timestamp_s``, ``path``), in a stable order.
        dataset_dir: the staging directory of the dataset.
        anomaly_ratio: wanted share of abnormal images in the dataset.
        seed: run seed; each image's randomness is derived from it and the frame identity.
        family: a key of :data:`FAMILIES`.

    Returns:
        One record per anomalous image.
    """
    if family not in FAMILIES:
        msg = f"unknown anomaly family {family!r}; known: {sorted(FAMILIES)}"
        raise ValueError(msg)
    fn = FAMILIES[family]
    frames = sorted(frames, key=lambda f: (f["video_id"], f["frame_index"]))
    records = []
    for pos, variant in plan_anomalies(len(frames), anomaly_ratio, seed):
        frame = frames[pos]
        rng = np.random.default_rng(stable_seed(seed, family, frame["video_id"], frame["frame_index"], variant))
        image = decode_image(Path(frame["path"]).read_bytes(), name=frame["path"])
        out, _, params = fn(image, rng, **family_kwargs)
        rel = Path("anomalies") / frame["video_id"] / f"frame_{frame['frame_index']:05d}_{family}_{variant}.png"
        (dataset_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (dataset_dir / rel).write_bytes(encode_png(out))
        records.append(
            AnomalyRecord(frame["video_id"], frame["frame_index"], frame["timestamp_s"], family, json.dumps(params, sort_keys=True), str(rel))
        )
    log.info("synthesized %d %s anomalies from %d frames (ratio %.2f, seed %d)", len(records), family, len(frames), anomaly_ratio, seed)
    return records
