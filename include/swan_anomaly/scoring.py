"""Score held-out raw images with registered models and with an endpoint, batch by batch.

The gate scores the challenger and the champion on the same rows; the endpoint validation
scores the endpoint and the registry model on the same rows. Both read the images once, from
the raw partitions of the lake (the frames as they arrived, before any crop or resize), and
hand each batch to every scorer, so memory stays at one batch of images whatever the split size.

A held-out row is ``[dataset_id, image_path, label, family, sha256, group]`` (:class:`HeldOutRow`), as
the training job lists its validation and test splits (``train.json``'s ``held_out``; rows of older
jobs lack the group, or the sha256 too). When the row carries a sha256, the
image read from the lake must have it: a raw partition rewritten since training (another run of
the same date) fails with :class:`swan_anomaly.LakeError` instead of scoring other images.

Example:
    >>> scorers = {"challenger": registry_scorer("models:/swan_anomaly_vit/4"),
    ...            "champion": registry_scorer("models:/swan_anomaly_vit/3")}   # doctest: +SKIP
    >>> scores = score_rows(lake, rows, scorers)                                # doctest: +SKIP
    >>> scores["champion"].shape                                                # doctest: +SKIP
    (64,)
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from swan_anomaly._errors import LakeError
from swan_anomaly.contract import ABNORMAL, LABEL_NAMES, NORMAL, NOVELTY_COLUMN
from swan_anomaly.lake import Lake

log = logging.getLogger(__name__)

#: A scorer takes encoded images and returns their ``[N]`` anomaly scores.
Scorer = Callable[[list[bytes]], np.ndarray]


class HeldOutRow(NamedTuple):
    """One image of a validation or test split, as ``train.json`` lists it (a JSON list, in this order)."""

    dataset_id: str
    image_path: str
    label: int  # 0 = abnormal, 1 = normal
    family: str
    sha256: str | None = None  # of the raw image the model was tested with (None: rows of older jobs)
    group: str | None = None  # the split group (video + time block) the AUROC interval resamples (None: older jobs)

    @classmethod
    def of(cls, row: Sequence) -> HeldOutRow:
        """A row as read from JSON (four to six values).

        Example:
            >>> HeldOutRow.of(["20261126", "frames/v/frame_00001.png", 1, "none"]).group is None
            True
        """
        return row if isinstance(row, HeldOutRow) else cls(*row)


def groups_of(rows: Sequence[Sequence]) -> np.ndarray | None:
    """``[N]`` split groups of held-out rows, or None when any row lacks one (rows of an older training job)."""
    groups = [HeldOutRow.of(r).group for r in rows]
    return None if not groups or any(g is None for g in groups) else np.array(groups)


#: Images read and scored at once.
BATCH_SIZE = 32
#: Seconds between progress lines while scoring.
PROGRESS_EVERY_S = 30.0


def registry_scorer(model_uri: str, *, novelty: bool = False) -> Scorer:
    """A scorer of the MLflow pyfunc at ``model_uri`` (e.g. ``models:/name/3``), loaded once, in this process.

    The pyfunc applies its own crop, resize and normalisation, as the endpoint does. On CPU it runs
    in float32 whatever ``SWAN_SERVING_CPU_PRECISION`` says: these are the registry's scores, which
    the gate judges and an endpoint in another precision is held to. With ``novelty=True`` it
    returns ``[N, 2]``: ``anomaly_score`` and ``novelty_score`` (NaN for a version without a novelty bank).
    """
    import mlflow.pyfunc
    import pandas as pd

    from swan_anomaly.serving.pyfunc import as_registered

    with as_registered():  # float32, whatever the endpoint's SWAN_SERVING_CPU_PRECISION says
        model = mlflow.pyfunc.load_model(model_uri)

    def score(images: list[bytes]) -> np.ndarray:
        out = model.predict(pd.DataFrame({"image": images}))
        if not novelty:
            return out.anomaly_score.to_numpy(dtype=np.float64)
        novel = out[NOVELTY_COLUMN].to_numpy(dtype=np.float64) if NOVELTY_COLUMN in out else np.full(len(out), np.nan)
        return np.column_stack([out.anomaly_score.to_numpy(dtype=np.float64), novel])

    return score


def endpoint_scorer(client, *, novelty: bool = False) -> Scorer:
    """A scorer of a serving endpoint (:class:`swan_anomaly.serving.client.EndpointClient`) over REST.

    With ``novelty=True`` it returns ``[N, 2]`` as :func:`registry_scorer` does.
    """

    def score(images: list[bytes]) -> np.ndarray:
        predictions = client.score(images)
        anomaly = np.array([p["anomaly_score"] for p in predictions], dtype=np.float64)
        if not novelty:
            return anomaly
        return np.column_stack([anomaly, np.array([p.get(NOVELTY_COLUMN, np.nan) for p in predictions], dtype=np.float64)])

    return score


def labels_of(rows: Sequence[Sequence]) -> np.ndarray:
    """``[N]`` labels (0 = abnormal, 1 = normal) of held-out rows."""
    return np.array([int(HeldOutRow.of(r).label) for r in rows], dtype=np.int64)


def class_counts(rows: Sequence[Sequence]) -> dict[str, int]:
    """``{"abnormal": n, "normal": m}`` of held-out rows.

    Example:
        >>> class_counts([["d", "a.png", 0, "cutpaste"], ["d", "b.png", 1, "none"], ["d", "c.png", 1, "none"]])
        {'abnormal': 1, 'normal': 2}
    """
    labels = labels_of(rows)
    return {LABEL_NAMES[ABNORMAL]: int((labels == ABNORMAL).sum()), LABEL_NAMES[NORMAL]: int((labels == NORMAL).sum())}


def _read_raw(lake: Lake, row: HeldOutRow) -> bytes:
    """The raw image of a held-out ``row``; a :class:`LakeError` when it is gone (a retry reads the same lake)."""
    try:
        return lake.read_raw(row.dataset_id, row.image_path)
    except FileNotFoundError as exc:
        msg = (
            f"raw/{row.dataset_id}/{row.image_path} is gone: the partition was uploaded again since without it (its video left the landing "
            f"zone?), so the rows the model was tested with cannot be scored; rerun the pipeline for that date ({exc})"
        )
        raise LakeError(msg) from exc


def score_rows(
    lake: Lake, rows: Sequence[Sequence], scorers: Mapping[str, Scorer], *, batch_size: int = BATCH_SIZE
) -> dict[str, np.ndarray]:
    """Every scorer's anomaly scores of the held-out ``rows``, reading each raw image once.

    Args:
        lake: the lake holding the raw images (local or ADLS).
        rows: :class:`HeldOutRow` s, or the lists they are read from.
        scorers: name -> scorer.
        batch_size: images per batch.

    Returns:
        name -> ``[len(rows)]`` float64 scores (``[len(rows), k]`` from a scorer of ``k`` columns), in the order of ``rows``.

    Raises:
        ValueError: a scorer returned another number of scores than images it was given.
        LakeError: a row's image is gone, or is not the one its sha256 names (the partition was uploaded again since).
    """
    out: dict[str, list[np.ndarray]] = {name: [] for name in scorers}
    started = last = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        batch = [HeldOutRow.of(r) for r in rows[start : start + batch_size]]
        images = [_read_raw(lake, r) for r in batch]
        for row, image in zip(batch, images):
            if row.sha256 and hashlib.sha256(image).hexdigest() != row.sha256:
                msg = (
                    f"raw/{row.dataset_id}/{row.image_path} is not the image the model was trained and tested with (sha256 differs): the "
                    "partition was uploaded again since; rerun the pipeline for that date"
                )
                raise LakeError(msg)
        for name, scorer in scorers.items():
            scores = np.asarray(scorer(images), dtype=np.float64)
            if scores.shape[:1] != (len(images),) or scores.ndim > 2:
                msg = f"{name} returned {scores.shape} scores for {len(images)} images"
                raise ValueError(msg)
            out[name].append(scores)
        done = start + len(batch)
        if time.perf_counter() - last >= PROGRESS_EVERY_S and done < len(rows):
            log.info(
                "scored %d of %d images with %s (%.1f img/s)", done, len(rows), ", ".join(scorers), done / (time.perf_counter() - started)
            )
            last = time.perf_counter()
    return {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in out.items()}
