"""Anomaly metrics with the anomaly class (label 0) as the positive class.

``anomaly_score = softmax(logits)[0]``; higher means more anomalous.

Example:
    >>> import numpy as np
    >>> m = anomaly_metrics(np.array([0, 1, 0, 1]), np.array([0.9, 0.2, 0.7, 0.4]))
    >>> m["auroc"], m["f1"]
    (1.0, 1.0)
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from swan_anomaly._errors import ValidationDataError
from swan_anomaly.contract import ABNORMAL, NORMAL


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[N, C]`` logits (float64 for stable scores)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def anomaly_scores(logits: np.ndarray) -> np.ndarray:
    """``softmax(logits)[:, 0]``: probability of the abnormal class, ``[N]`` in [0, 1]."""
    return softmax(logits)[:, ABNORMAL]


def anomaly_metrics(labels: np.ndarray, scores: np.ndarray, *, threshold: float = 0.5) -> dict:
    """AUROC, average precision, precision, recall, F1, the false-alarm rate and confusion counts for the anomaly class.

    Args:
        labels: ``[N]`` ints, 0 = abnormal, 1 = normal.
        scores: ``[N]`` anomaly scores in [0, 1].
        threshold: an image is called abnormal when its score is >= threshold.

    Raises:
        ValidationDataError: the labels hold only one class, so AUROC is undefined.
    """
    y = (np.asarray(labels) == ABNORMAL).astype(int)
    if y.min() == y.max():
        which = "no anomalies" if y.max() == 0 else "no normal images"
        msg = f"evaluation set of {len(y)} images has {which}; AUROC and F1 are meaningless"
        raise ValidationDataError(msg)
    pred = (np.asarray(scores) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "auroc": float(roc_auc_score(y, scores)),
        "average_precision": float(average_precision_score(y, scores)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "threshold": float(threshold),
        # share of the normal images called abnormal (the false-positive rate at the threshold)
        "false_alarm_rate": float(fp / (fp + tn)),
        # rows = truth (abnormal, normal), columns = prediction (abnormal, normal)
        "confusion_matrix": [[int(tp), int(fn)], [int(fp), int(tn)]],
    }


def decision_score(anomaly: np.ndarray, novelty: np.ndarray | None, *, threshold: float) -> np.ndarray:
    """One score for the served decision: ``max(anomaly_score / threshold, novelty_score)``.

    Both terms are 1 at their own decision boundary (``anomaly_score`` at the threshold chosen on
    validation; ``novelty_score`` is scaled so that 1 is its boundary), so an image is called
    abnormal when ``decision_score >= 1``: when the classifier says so *or* its patches lie
    farther from every normal training patch than the validation normals' do. Without a novelty
    score it is ``anomaly_score / threshold``. Ranking by it gives the AUROC of the combination.

    Example:
        >>> decision_score(np.array([0.2, 0.9, 0.1]), np.array([0.5, 0.1, 1.5]), threshold=0.5).tolist()
        [0.5, 1.8, 1.5]
    """
    scaled = np.asarray(anomaly, dtype=np.float64) / max(float(threshold), 1e-12)
    return scaled if novelty is None else np.maximum(scaled, np.asarray(novelty, dtype=np.float64))


def served_decision(anomaly: np.ndarray, novelty: np.ndarray | None, *, threshold: float) -> np.ndarray:
    """``[N]`` bool: which images the served model calls abnormal: ``anomaly_score >= threshold`` or ``novelty_score >= 1``.

    What a client of the endpoint acts on (:mod:`swan_anomaly.serving.pyfunc`). A NaN novelty
    score (a version without a novelty bank) leaves the classifier's call alone.

    Example:
        >>> served_decision(np.array([0.2, 0.9, 0.1, 0.1]), np.array([0.5, 0.1, 1.5, np.nan]), threshold=0.5).tolist()
        [False, True, True, False]
    """
    called = np.asarray(anomaly, dtype=np.float64) >= threshold
    if novelty is None:
        return called
    return called | (np.asarray(novelty, dtype=np.float64) >= 1.0)  # NaN >= 1 is False


def decision_false_alarms(labels: np.ndarray, anomaly: np.ndarray, novelty: np.ndarray | None, *, threshold: float) -> tuple[int, float]:
    """``(count, share)`` of the normal images (label 1) that the :func:`served_decision` calls abnormal.

    Example:
        >>> decision_false_alarms(np.array([0, 1, 1, 1]), np.array([0.9, 0.6, 0.1, 0.1]), np.array([0.1, 0.1, 1.2, 0.3]), threshold=0.5)
        (2, 0.6666666666666666)
    """
    alarms = served_decision(anomaly, novelty, threshold=threshold)[np.asarray(labels) == NORMAL]
    return int(alarms.sum()), float(alarms.mean())


#: How the decision threshold is chosen on the validation set.
THRESHOLD_METHODS = ("max_f1", "target_fpr")


def choose_threshold(labels: np.ndarray, scores: np.ndarray, *, method: str = "max_f1", target_fpr: float = 0.01) -> float:
    """The anomaly-score threshold chosen on a validation set (anomaly class positive).

    ``max_f1``: the cut with the highest F1 (ties: the highest, fewer false alarms), placed in
    the middle of the gap between the lowest score it calls abnormal and the next lower score,
    so that unseen images a little below the validation scores are not lost to a razor-edge
    threshold. ``target_fpr``: the lowest threshold whose false-positive rate on normal images
    stays within ``target_fpr``.

    Example:
        >>> choose_threshold(np.array([0, 0, 1, 1]), np.array([0.9, 0.6, 0.4, 0.1]))
        0.5
    """
    if method not in THRESHOLD_METHODS:
        msg = f"threshold method must be one of {THRESHOLD_METHODS}, got {method!r}"
        raise ValueError(msg)
    y = (np.asarray(labels) == ABNORMAL).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    if y.min() == y.max():
        msg = f"cannot choose a threshold on {len(y)} images of one class"
        raise ValidationDataError(msg)
    if method == "target_fpr":
        fpr, _, thresholds = roc_curve(y, scores)
        ok = thresholds[(fpr <= target_fpr) & np.isfinite(thresholds)]
        return float(ok.min()) if len(ok) else float(scores.max())
    precision, recall, cuts = precision_recall_curve(y, scores)  # cuts ascending
    precision, recall = precision[: len(cuts)], recall[: len(cuts)]
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0)
    best = cuts[np.flatnonzero(f1 == f1.max())[-1]]  # ties: the highest cut
    lower = scores[scores < best]
    return float((best + lower.max()) / 2) if len(lower) else float(best)


def cross_fitted_f1(labels: np.ndarray, scores: np.ndarray, groups, *, method: str = "max_f1", target_fpr: float = 0.01) -> float | None:
    """F1 (anomaly class positive) of a threshold chosen on these rows, each half of the groups judged at the threshold
    chosen on the other half: the served F1 of a model whose threshold was tuned on these very rows, without the optimism.

    The gate's rows are the challenger's validation split, where its stored threshold was chosen, so its F1 at that
    threshold there is in-sample. Halves by group (near-duplicate frames stay together), by a hash of the group's name.
    None when a half lacks a class, or there are fewer than two groups (nothing to judge it by).

    Example:
        >>> labels = np.array([0, 0, 1, 1, 0, 0, 1, 1])
        >>> cross_fitted_f1(labels, np.array([0.9, 0.8, 0.2, 0.1, 0.9, 0.7, 0.3, 0.1]), ["a", "a", "a", "a", "b", "b", "b", "b"])
        1.0
    """
    from swan_anomaly.anomalies import stable_seed

    labels, scores, groups = np.asarray(labels), np.asarray(scores, dtype=np.float64), np.asarray(groups)
    names = sorted(set(groups.tolist()))
    if len(names) < 2:
        return None
    order = sorted(names, key=lambda g: (stable_seed("cross-fit", g), g))
    first = np.isin(groups, order[: len(order) // 2])
    predicted = np.zeros(len(labels), dtype=bool)
    for judged in (first, ~first):
        tuned = ~judged
        if len(set(labels[tuned].tolist())) < 2 or len(set(labels[judged].tolist())) < 2:
            return None
        threshold = choose_threshold(labels[tuned], scores[tuned], method=method, target_fpr=target_fpr)
        predicted[judged] = scores[judged] >= threshold
    positive = labels == ABNORMAL
    tp, fp, fn = int((predicted & positive).sum()), int((predicted & ~positive).sum()), int((~predicted & positive).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


#: Confidence of the AUROC intervals, and the bootstrap resamples behind them.
CI_LEVEL = 0.95
CI_RESAMPLES = 2000


def _auroc_of_samples(abnormal: np.ndarray, normal: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUROC of abnormal over normal scores along ``axis``: Mann-Whitney U / (n1 * n0), ties counting half."""
    from scipy.stats import mannwhitneyu

    u = mannwhitneyu(abnormal, normal, axis=axis, method="asymptotic", use_continuity=False).statistic
    return u / (abnormal.shape[axis] * normal.shape[axis])


def _group_auroc_interval(
    labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, *, level: float, resamples: int, seed: int
) -> tuple[float, float]:
    """Percentile interval of AUROC from a cluster bootstrap: whole groups drawn with replacement.

    ``pairs[g, h]`` counts the (abnormal of group g, normal of group h) pairs the abnormal image
    outscores (ties half), so a resample that draws group g ``w[g]`` times has AUROC
    ``w @ pairs @ w / ((w @ n_abnormal) * (w @ n_normal))``, exactly, without touching an image again.
    """
    names, index = np.unique(groups, return_inverse=True)
    if len(names) < 2:
        msg = f"cannot bound AUROC over {len(names)} group: resampling groups needs two"
        raise ValidationDataError(msg)
    abnormal = labels == ABNORMAL
    n_abnormal = np.bincount(index[abnormal], minlength=len(names)).astype(np.float64)
    n_normal = np.bincount(index[~abnormal], minlength=len(names)).astype(np.float64)
    pairs = np.zeros((len(names), len(names)))
    a_scores, a_group = scores[abnormal], index[abnormal]
    for h in np.flatnonzero(n_normal):
        normal = np.sort(scores[~abnormal & (index == h)])
        below = np.searchsorted(normal, a_scores, side="left")
        ties = np.searchsorted(normal, a_scores, side="right") - below
        pairs[:, h] = np.bincount(a_group, weights=below + 0.5 * ties, minlength=len(names))
    n = len(names)
    draws = np.random.default_rng(seed).integers(0, n, (resamples, n)) + n * np.arange(resamples)[:, None]
    weights = np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)  # [R, G]: times drawn
    denominator = (weights @ n_abnormal) * (weights @ n_normal)
    kept = denominator > 0  # a resample that drew no image of a class has no AUROC
    aurocs = ((weights[kept] @ pairs) * weights[kept]).sum(axis=1) / denominator[kept]
    tail = (1 - level) / 2
    return float(np.quantile(aurocs, tail)), float(np.quantile(aurocs, 1 - tail))


def auroc_interval(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    level: float = CI_LEVEL,
    resamples: int = CI_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of AUROC (anomaly class positive).

    With ``groups`` (the split groups: one video's time block, its frames and their anomalous
    copies), a cluster bootstrap: each resample draws whole groups with replacement. Frames of one
    block are near-duplicates, not independent draws, so resampling images would claim precision
    the data does not hold: the same 40 images repeated 8 times would give an interval about
    2.8 times narrower. Without ``groups``, each resample draws the abnormal and the normal images
    with replacement, separately (a stratified bootstrap, :func:`scipy.stats.bootstrap` with two
    samples): right only for independent images. Seeded: the same data give the same interval.

    Args:
        labels: ``[N]`` ints, 0 = abnormal, 1 = normal.
        scores: ``[N]`` anomaly scores.
        groups: ``[N]`` group names (any hashable), or None.
        level: confidence level, e.g. 0.95.
        resamples: bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        ``(low, high)``. A small set gives a wide interval: that width is the point.

    Raises:
        ValidationDataError: either class has fewer than two images, or there are fewer than two groups.

    Example:
        >>> low, high = auroc_interval(np.array([0, 0, 0, 1, 1, 1]), np.array([0.9, 0.8, 0.3, 0.4, 0.2, 0.1]))
        >>> bool(low < 0.889 < high)
        True
    """
    from scipy.stats import bootstrap

    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    abnormal, normal = scores[labels == ABNORMAL], scores[labels != ABNORMAL]
    if min(len(abnormal), len(normal)) < 2:
        msg = f"cannot bound AUROC with {len(abnormal)} abnormal and {len(normal)} normal images: resampling needs two of each"
        raise ValidationDataError(msg)
    if groups is not None:
        return _group_auroc_interval(labels, scores, np.asarray(groups), level=level, resamples=resamples, seed=seed)
    result = bootstrap(
        (abnormal, normal),
        _auroc_of_samples,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


#: Fewest images of each class for a split's AUROC to count as measured: below it the split is reported
#: as too small to measure, never as a precise number (the promotion gate asks for more, 25 by default).
MIN_MEASURABLE_PER_CLASS = 10


def too_small_to_measure(abnormal: int, normal: int, *, minimum: int = MIN_MEASURABLE_PER_CLASS) -> str | None:
    """Why a split of ``abnormal`` and ``normal`` images is too small to measure, or None when it is not.

    Example:
        >>> too_small_to_measure(3, 5), too_small_to_measure(40, 40)
        ('3 abnormal, 5 normal: fewer than 10 images of a class', None)
    """
    if min(abnormal, normal) >= minimum:
        return None
    return f"{abnormal} abnormal, {normal} normal: fewer than {minimum} images of a class"


def evaluation_report(labels: np.ndarray, scores: np.ndarray, *, threshold: float, seed: int = 0, groups=None) -> dict:
    """:func:`anomaly_metrics` at ``threshold``, the AUROC interval and the class counts, in one dict.

    Keys: those of :func:`anomaly_metrics`, ``auroc_ci`` (``[low, high]``, :func:`auroc_interval`,
    resampling ``groups`` when given; None when a class has fewer than two images, or there are
    fewer than two groups), ``abnormal`` and ``normal`` (image counts), ``groups`` (how many, or
    None), ``measurable`` (False when either class has fewer than :data:`MIN_MEASURABLE_PER_CLASS`
    images) and ``too_small`` (why not, or None). What the training job, the gate and the endpoint
    validation report for one model on one set of rows; show it with :func:`format_auroc`.

    Example:
        >>> r = evaluation_report(np.array([0, 0, 1, 1]), np.array([0.9, 0.6, 0.4, 0.1]), threshold=0.5)
        >>> r["auroc"], r["recall"], r["abnormal"], r["normal"], r["measurable"]
        (1.0, 1.0, 2, 2, False)
    """
    labels = np.asarray(labels)
    report = anomaly_metrics(labels, scores, threshold=threshold)
    report["auroc_ci"] = auroc_interval_or_none(labels, scores, seed=seed, groups=groups)
    report["abnormal"], report["normal"] = int((labels == ABNORMAL).sum()), int((labels != ABNORMAL).sum())
    report["groups"] = len(set(np.asarray(groups).tolist())) if groups is not None else None
    report["too_small"] = too_small_to_measure(report["abnormal"], report["normal"])
    report["measurable"] = report["too_small"] is None
    return report


def is_measurable(report: dict) -> bool:
    """Whether a report's AUROC counts as measured: its ``measurable``, else judged from its class counts
    (results written before ``measurable`` existed), else True when it gives no counts.

    Example:
        >>> is_measurable({"abnormal": 3, "normal": 50}), is_measurable({"auroc": 0.9})
        (False, True)
    """
    if "measurable" in report and report["measurable"] is not None:
        return bool(report["measurable"])
    abnormal, normal = report.get("abnormal"), report.get("normal")
    if abnormal is None or normal is None:
        return True
    return too_small_to_measure(int(abnormal), int(normal)) is None


def format_auroc(report: dict) -> str:
    """A report's AUROC for people: ``0.9812 (95% CI 0.950-0.990, n=40/40 in 6 groups)`` (n = abnormal/normal images; the
    groups, when known, are what the interval resampled), or ``too small to measure (3 abnormal, 5 normal)``.

    Takes an :func:`evaluation_report`, or any dict with ``auroc`` and, where known, ``auroc_ci``,
    ``abnormal`` and ``normal`` (see :func:`is_measurable`).

    Example:
        >>> format_auroc({"auroc": 0.98123, "auroc_ci": [0.95, 0.99], "abnormal": 40, "normal": 40})
        '0.9812 (95% CI 0.950-0.990, n=40/40)'
        >>> format_auroc({"auroc": 0.98123, "auroc_ci": [0.90, 0.99], "abnormal": 40, "normal": 40, "groups": 6})
        '0.9812 (95% CI 0.900-0.990, n=40/40 in 6 groups)'
        >>> format_auroc({"auroc": 1.0, "auroc_ci": [1.0, 1.0], "abnormal": 3, "normal": 5})
        'too small to measure (3 abnormal, 5 normal)'
    """
    abnormal, normal = report.get("abnormal"), report.get("normal")
    counted = abnormal is not None and normal is not None
    auroc = report.get("auroc")
    if not is_measurable(report) or auroc is None or not np.isfinite(auroc):
        return f"too small to measure ({abnormal} abnormal, {normal} normal)" if counted else "too small to measure"
    interval = report.get("auroc_ci")
    ci = f"95% CI {interval[0]:.3f}-{interval[1]:.3f}" if interval else "no interval"
    groups = f" in {report['groups']} groups" if report.get("groups") else ""
    return f"{auroc:.4f} ({ci}, n={abnormal}/{normal}{groups})" if counted else f"{auroc:.4f} ({ci})"


def auroc_interval_or_none(labels: np.ndarray, scores: np.ndarray, *, seed: int = 0, groups=None) -> list[float] | None:
    """:func:`auroc_interval` as ``[low, high]``, or None when a class has fewer than two images, or there are fewer than
    two groups (no interval to give)."""
    try:
        return list(auroc_interval(labels, scores, seed=seed, groups=groups))
    except ValidationDataError:
        return None


def format_interval(interval: list[float] | None) -> str:
    """``0.912-0.987``, or ``n/a`` for no interval.

    Example:
        >>> format_interval([0.91234, 0.98765]), format_interval(None)
        ('0.9123-0.9877', 'n/a')
    """
    return f"{interval[0]:.4f}-{interval[1]:.4f}" if interval else "n/a"


def recall_by_family(labels: np.ndarray, scores: np.ndarray, families, *, threshold: float) -> dict[str, float]:
    """Share of each anomaly family's images scored at or above ``threshold`` (normal images left out).

    Example:
        >>> recall_by_family(np.array([0, 0, 1]), np.array([0.9, 0.2, 0.1]), ["blur", "cut", "none"], threshold=0.5)
        {'blur': 1.0, 'cut': 0.0}
    """
    labels, scores, families = np.asarray(labels), np.asarray(scores), np.asarray(families)
    abnormal = labels == ABNORMAL
    return {str(f): float((scores[abnormal & (families == f)] >= threshold).mean()) for f in sorted(set(families[abnormal].tolist()))}
