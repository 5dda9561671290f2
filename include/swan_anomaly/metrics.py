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
from sklearn.metrics import average_precision_score, confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

from swan_anomaly._errors import ValidationDataError
from swan_anomaly.labels import ABNORMAL


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[N, C]`` logits (float64 for stable scores)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def anomaly_scores(logits: np.ndarray) -> np.ndarray:
    """``softmax(logits)[:, 0]``: probability of the abnormal class, ``[N]`` in [0, 1]."""
    return softmax(logits)[:, ABNORMAL]


def anomaly_metrics(labels: np.ndarray, scores: np.ndarray, *, threshold: float = 0.5) -> dict:
    """AUROC, average precision, precision, recall, F1 and confusion counts for the anomaly class.

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
        # rows = truth (abnormal, normal), columns = prediction (abnormal, normal)
        "confusion_matrix": [[int(tp), int(fn)], [int(fp), int(tn)]],
    }
