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
