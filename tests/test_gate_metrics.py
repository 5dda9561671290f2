"""Metrics with the anomaly class positive, and the promotion gate."""

from __future__ import annotations

import numpy as np
import pytest

from swan_anomaly import ValidationDataError
from swan_anomaly.gate import GateMode, decide
from swan_anomaly.metrics import anomaly_metrics, anomaly_scores


def test_scores_are_softmax_of_the_abnormal_logit():
    logits = np.array([[2.0, 0.0], [0.0, 3.0]])
    expected = np.exp(logits[:, 0]) / np.exp(logits).sum(axis=1)
    np.testing.assert_allclose(anomaly_scores(logits), expected)


def test_f1_is_for_the_anomaly_class():
    labels = np.array([0, 0, 1, 1, 1, 1])
    scores = np.array([0.9, 0.2, 0.1, 0.1, 0.1, 0.1])  # one anomaly missed
    m = anomaly_metrics(labels, scores)
    assert m["recall"] == pytest.approx(0.5) and m["precision"] == pytest.approx(1.0)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"] == [[1, 1], [0, 4]]


def test_metrics_refuse_a_single_class():
    with pytest.raises(ValidationDataError, match="no anomalies"):
        anomaly_metrics(np.array([1, 1]), np.array([0.1, 0.2]))


def test_gate_modes_and_regression():
    good = {"auroc": 0.99, "f1": 0.95}
    assert decide(good, None).promote
    bad = decide({"auroc": 0.6, "f1": 0.95}, None, GateMode.ENABLED)
    assert not bad.passed and not bad.promote and "auroc" in bad.reasons[0]
    assert decide({"auroc": 0.6, "f1": 0.95}, None, GateMode.DRY_RUN).promote
    regress = decide({"auroc": 0.93, "f1": 0.95}, {"auroc": 0.99, "f1": 0.95})
    assert not regress.promote and "regresses" in regress.reasons[0]


def test_the_threshold_is_chosen_on_validation_by_max_f1_or_a_target_false_positive_rate():
    from swan_anomaly.metrics import choose_threshold

    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.95, 0.8, 0.3, 0.6, 0.2, 0.1, 0.05])
    # best F1 calls 0.3 and above abnormal (3 anomalies, 1 false alarm: F1 0.857); the threshold sits
    # halfway to the next lower score, 0.2
    assert choose_threshold(labels, scores) == pytest.approx(0.25)
    assert choose_threshold(labels, scores, method="target_fpr", target_fpr=0.0) == pytest.approx(0.8)  # no normal image at or above
    assert choose_threshold(labels, scores, method="target_fpr", target_fpr=0.25) == pytest.approx(0.3)  # one of four allowed
    separated = choose_threshold(np.array([0, 0, 1, 1]), np.array([0.99, 0.98, 0.02, 0.01]))
    assert separated == pytest.approx(0.5)  # the middle of the gap, not the edge of the validation scores
    with pytest.raises(ValueError, match="threshold method"):
        choose_threshold(labels, scores, method="youden")
    with pytest.raises(ValidationDataError):
        choose_threshold(np.array([1, 1]), np.array([0.1, 0.2]))


def test_recall_is_reported_per_anomaly_family():
    from swan_anomaly.metrics import recall_by_family

    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.9, 0.1])
    families = ["local_blur", "local_blur", "cutpaste", "cutpaste", "none", "none"]
    assert recall_by_family(labels, scores, families, threshold=0.5) == {"cutpaste": 0.5, "local_blur": 1.0}
