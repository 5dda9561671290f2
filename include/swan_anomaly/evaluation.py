"""Evaluation plots of a trained model, logged as MLflow artifacts (anomaly class positive).

ROC and precision-recall curves, anomaly-score histograms by class with the chosen threshold,
the confusion matrix, and a grid of the worst-scored images (abnormal images scored lowest,
normal images scored highest): the first place to look when a model disappoints.

Example:
    >>> import numpy as np
    >>> fig = curves_figure(np.array([0, 1, 0, 1]), np.array([0.9, 0.2, 0.7, 0.4]), title="val")
    >>> fig.axes[0].get_title()
    'val ROC (AUROC 1.000)'
"""

from __future__ import annotations

import numpy as np

from swan_anomaly.contract import ABNORMAL, NORMAL


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_figure(labels: np.ndarray, scores: np.ndarray, *, title: str):
    """ROC and precision-recall curves side by side."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    y = (np.asarray(labels) == ABNORMAL).astype(int)
    fpr, tpr, _ = roc_curve(y, scores)
    precision, recall, _ = precision_recall_curve(y, scores)
    fig, (roc, pr) = _plt().subplots(1, 2, figsize=(8, 3.6))
    roc.plot(fpr, tpr)
    roc.plot([0, 1], [0, 1], linestyle=":", color="grey")
    roc.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"{title} ROC (AUROC {roc_auc_score(y, scores):.3f})")
    pr.plot(recall, precision)
    pr.set(xlabel="recall", ylabel="precision", title=f"{title} PR (AP {average_precision_score(y, scores):.3f})", ylim=(0, 1.02))
    fig.tight_layout()
    return fig


def histogram_figure(labels: np.ndarray, scores: np.ndarray, *, threshold: float, title: str):
    """Anomaly-score histograms of abnormal and normal images, with the decision threshold."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    fig, ax = _plt().subplots(figsize=(5, 3.4))
    bins = np.linspace(0, 1, 41)
    ax.hist(scores[labels == NORMAL], bins=bins, alpha=0.6, label="normal")
    ax.hist(scores[labels == ABNORMAL], bins=bins, alpha=0.6, label="abnormal")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="anomaly score", ylabel="images", title=f"{title} scores by class")
    ax.legend()
    fig.tight_layout()
    return fig


def worst_grid(
    images: list[bytes], labels: np.ndarray, scores: np.ndarray, names: list[str], *, per_class: int = 8, tile: int = 128
) -> np.ndarray:
    """RGB grid: top row the abnormal images scored lowest, bottom row the normal images scored highest."""
    import cv2

    from swan_anomaly.images import decode_image

    labels, scores = np.asarray(labels), np.asarray(scores)
    rows = []
    for label, order in ((ABNORMAL, 1), (NORMAL, -1)):
        idx = np.where(labels == label)[0]
        idx = idx[np.argsort(order * scores[idx], kind="stable")][:per_class]
        tiles = []
        for i in idx:
            img = cv2.resize(decode_image(images[i], name=names[i]), (tile, tile), interpolation=cv2.INTER_NEAREST)
            text = f"{'abn' if label == ABNORMAL else 'nor'} {scores[i]:.3f}"
            cv2.putText(img, text, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(img, text, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(img)
        tiles += [np.zeros((tile, tile, 3), np.uint8)] * (per_class - len(tiles))
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)
