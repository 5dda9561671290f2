"""A dataset's anomalies: which frames get anomalous copies, of which family, written where, with what record."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swan_anomaly.anomalies.registry import FAMILIES, _resolve
from swan_anomaly.contract import DEFAULT_FAMILIES
from swan_anomaly.images import decode_image, encode_png

log = logging.getLogger(__name__)


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from a stable key (sha256, not ``hash()``, which is salted per process)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _assign_families(n: int, families: Sequence[str], seed: int) -> list[str]:
    """Seeded, balanced family per anomalous copy: each family gets ``floor(n / k)`` or ``ceil(n / k)``."""
    rng = np.random.default_rng(stable_seed(seed, "families", *families))
    order = rng.permutation(len(families))  # which families get the remainder
    labels = [families[order[i % len(families)]] for i in range(n)]
    return [labels[i] for i in rng.permutation(n)]


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
