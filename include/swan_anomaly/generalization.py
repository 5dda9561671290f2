"""Generalization report: leave one anomaly family out of training, test on it.

For every anomaly family of the dataset, a fresh model (same base, same knobs, its own epoch
budget) trains on the train split without that family's images, picks its threshold on the
validation split without them, and is tested on the test split's normal images plus the
held-out family's: how well does the detector catch a kind of anomaly it has never seen? The
seen families' test images give the comparison row. Splits stay those of the main model, so
no group leaks.

Families that share a mechanism leave training together (:data:`SHARED_MECHANISMS`): a textured
``occlusion`` pastes the procedural textures ``perlin_texture`` blends in, so a model trained on
either has seen the other's textures. Each row counts the images its unseen AUROC rests on, and
one of fewer than :data:`~swan_anomaly.metrics.MIN_MEASURABLE_PER_CLASS` held-out anomalies is
too small to measure: shown as such, and left out of :func:`min_unseen_auroc`.

Example:
    >>> table = leave_one_family_out(gold, base_model_dir, spec, TrainConfig(epochs=10))  # doctest: +SKIP
    >>> table[["held_out", "unseen_auroc", "unseen_recall"]]                               # doctest: +SKIP
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from swan_anomaly import trainer
from swan_anomaly.contract import ABNORMAL, NORMAL
from swan_anomaly.metrics import anomaly_metrics, anomaly_scores, choose_threshold, too_small_to_measure
from swan_anomaly.splits import Split

log = logging.getLogger(__name__)

COLUMNS = (
    "held_out",
    "trained_on",
    "unseen_auroc",
    "unseen_average_precision",
    "unseen_recall",
    "seen_auroc",
    "threshold",
    "best_epoch",
    "unseen_abnormal",
    "normal",
    "measurable",
)

#: Families whose anomalies share a mechanism: holding one out of training holds out the others of its set too (textured
#: occlusions paste the procedural textures that perlin_texture blends in), so "never saw it" holds.
SHARED_MECHANISMS = (frozenset({"perlin_texture", "occlusion"}),)


def left_out_with(held: str) -> frozenset[str]:
    """The families a model that must never see ``held`` trains without: ``held`` and those sharing its mechanism.

    Example:
        >>> sorted(left_out_with("perlin_texture")), sorted(left_out_with("local_blur"))
        (['occlusion', 'perlin_texture'], ['local_blur'])
    """
    return frozenset({held}).union(*(group for group in SHARED_MECHANISMS if held in group))


def families_of(gold: pd.DataFrame) -> list[str]:
    """The anomaly families present in every split (a family missing from one cannot be held out fairly)."""
    abnormal = gold[gold.label == ABNORMAL]
    per_split = [set(abnormal[abnormal.split == s.value].family) for s in Split]
    return sorted(set.intersection(*per_split)) if per_split else []


def leave_one_family_out(
    gold: pd.DataFrame, base_model: str, spec, config, *, families: list[str] | None = None, images: tuple | None = None
) -> pd.DataFrame:
    """One row per held-out family (columns :data:`COLUMNS`); empty with fewer than two families.

    Args:
        gold: the gold rows (``content``, ``label``, ``family``, ``split``, ``sample_id``).
        base_model: the base model directory or hub id every run starts from.
        spec: the preprocessing spec of that model.
        config: a :class:`~swan_anomaly.trainer.TrainConfig` (epochs, seed, threshold method...).
        families: the families to hold out (default: :func:`families_of`).
        images: ``(pixels, y)`` of every row of ``gold`` in its order, already decoded with
            ``spec`` (:func:`~swan_anomaly.trainer.frame_tensors`, as ``run_training`` has them); computed here when not given.
    """
    from swan_anomaly.modeling import load_classifier, resolve_device

    families = families_of(gold) if families is None else families
    if len(families) < 2:
        return pd.DataFrame(columns=list(COLUMNS))
    gold = gold.reset_index(drop=True)
    x, y = images if images is not None else trainer.frame_tensors(gold, spec)  # every image decoded once; each run takes its rows
    split, family, normal = gold.split.to_numpy(), gold.family.to_numpy(), (gold.label == NORMAL).to_numpy()

    def rows_of(mask: np.ndarray) -> tuple:
        idx = np.flatnonzero(mask)
        return x[idx], y[idx]

    device = resolve_device(config.device)  # scored where the main model is scored (train_classifier hands back a CPU model)
    rows = []
    for held in families:
        left_out = left_out_with(held)
        if not set(families) - left_out:  # every family shares its mechanism: nothing abnormal would be left to train on
            log.warning("leave-one-family-out: %s shares its mechanism with every other family here (%s); not reported", held, families)
            continue
        keep = normal | ~np.isin(family, list(left_out))
        train, val = rows_of(keep & (split == Split.TRAIN.value)), rows_of(keep & (split == Split.VAL.value))
        model, _, best_epoch = trainer.train_classifier(load_classifier(base_model), train, val, spec, config)
        model.to(device)
        _, val_logits = trainer.evaluate(model, *val, spec, config.batch_size)
        threshold = choose_threshold(
            val[1].numpy(), anomaly_scores(val_logits), method=config.threshold_method, target_fpr=config.target_fpr
        )
        test = split == Split.TEST.value
        scores = {}
        for name, mask in (("unseen", test & (normal | (family == held))), ("seen", test & keep)):
            xs, ys = rows_of(mask)
            _, logits = trainer.evaluate(model, xs, ys, spec, config.batch_size)
            scores[name] = anomaly_metrics(ys.numpy(), anomaly_scores(logits), threshold=threshold)
        unseen_abnormal, test_normal = int((test & (family == held) & ~normal).sum()), int((test & normal).sum())
        row = {
            "held_out": held,
            "trained_on": ",".join(f for f in families if f not in left_out),
            "unseen_auroc": scores["unseen"]["auroc"],
            "unseen_average_precision": scores["unseen"]["average_precision"],
            "unseen_recall": scores["unseen"]["recall"],
            "seen_auroc": scores["seen"]["auroc"],
            "threshold": threshold,
            "best_epoch": best_epoch,
            "unseen_abnormal": unseen_abnormal,
            "normal": test_normal,
            "measurable": too_small_to_measure(unseen_abnormal, test_normal) is None,
        }
        log.info(
            "leave-one-family-out: %s unseen AUROC %.4f recall %.4f (seen AUROC %.4f)",
            held,
            row["unseen_auroc"],
            row["unseen_recall"],
            row["seen_auroc"],
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def format_table(table: pd.DataFrame) -> str:
    """The table as aligned text, for logs and the demo's summary."""
    if table.empty:
        return "(fewer than two anomaly families: no leave-one-family-out report)"
    lines = [f"{'held-out family':<22} {'unseen AUROC':>12} {'unseen recall':>13} {'seen AUROC':>10}  n (abnormal/normal)"]
    for r in table.itertuples():
        counted = "unseen_abnormal" in table and not pd.isna(r.unseen_abnormal)
        n = f"{int(r.unseen_abnormal)}/{int(r.normal)}" if counted else "?"
        if counted and not r.measurable:
            lines.append(f"{r.held_out:<22} {'too small to measure':>37}  {'':>10}  {n}")
        else:
            lines.append(f"{r.held_out:<22} {r.unseen_auroc:>12.4f} {r.unseen_recall:>13.4f} {r.seen_auroc:>10.4f}  {n}")
    return "\n".join(lines)


def min_unseen_auroc(table: pd.DataFrame) -> float | None:
    """The worst unseen-family AUROC among the families measured, or None without one (no report, or every family too
    few images to measure: the minimum of a few noisy values would read lower than the detector is)."""
    if table.empty:
        return None
    measured = table[table.measurable.astype(bool)] if "measurable" in table else table
    return None if measured.empty else float(np.min(measured.unseen_auroc))
