"""Splits by source group (video + time block), never by random row.

Near-identical neighbouring frames share a group, so they always land in the same split.

Example:
    >>> assign_splits([f"v-b{i:04d}" for i in range(10)], seed=0)["v-b0000"] in {"train", "val", "test"}
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from swan_anomaly.anomalies import stable_seed


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


def assign_splits(groups: Iterable[str], *, seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15) -> dict[str, str]:
    """Deterministically assign each group to train, val or test.

    Groups are ordered by a seeded hash; the first share goes to test, the next to val,
    the rest to train. With three or more groups each split gets at least one group.

    Returns:
        ``{group: split}``.
    """
    ordered = sorted(set(groups), key=lambda g: stable_seed(seed, g))
    n = len(ordered)
    if n < 3:
        msg = f"need at least 3 split groups (video x time block) for train/val/test, got {n}; add video or shorten the time block"
        raise ValueError(msg)
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    out = {}
    for i, g in enumerate(ordered):
        out[g] = Split.TEST if i < n_test else Split.VAL if i < n_test + n_val else Split.TRAIN
    return {g: str(s) for g, s in out.items()}
