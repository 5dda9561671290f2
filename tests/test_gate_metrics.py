"""Metrics with the anomaly class positive, and the promotion gate."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from swan_anomaly import ValidationDataError
from swan_anomaly.gate import GateMode, decide, next_references
from swan_anomaly.metrics import (
    anomaly_metrics,
    anomaly_scores,
    auroc_interval,
    choose_threshold,
    cross_fitted_f1,
    evaluation_report,
    format_auroc,
)


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
    assert m["false_alarm_rate"] == 0.0


def test_the_false_alarm_rate_is_the_share_of_normal_images_called_abnormal():
    labels = np.array([0, 1, 1, 1, 1])
    scores = np.array([0.9, 0.6, 0.5, 0.2, 0.1])  # two of four normal images at or above 0.5
    assert anomaly_metrics(labels, scores, threshold=0.5)["false_alarm_rate"] == pytest.approx(0.5)


def test_metrics_refuse_a_single_class():
    with pytest.raises(ValidationDataError, match="no anomalies"):
        anomaly_metrics(np.array([1, 1]), np.array([0.1, 0.2]))


ENOUGH = {"abnormal": 40, "normal": 40}


def test_gate_modes_and_regression():
    good = {"auroc": 0.99, "f1": 0.95}
    assert decide(good, None, class_counts=ENOUGH).promote
    bad = decide({"auroc": 0.6, "f1": 0.95}, None, GateMode.ENABLED, class_counts=ENOUGH)
    assert not bad.passed and not bad.promote and "auroc" in bad.reasons[0]
    assert decide({"auroc": 0.6, "f1": 0.95}, None, GateMode.DRY_RUN, class_counts=ENOUGH).promote
    regress = decide({"auroc": 0.93, "f1": 0.95}, {"auroc": 0.99, "f1": 0.95}, class_counts=ENOUGH)
    assert not regress.promote and "regresses" in regress.reasons[0]
    assert decide({"auroc": 0.975, "f1": 0.95}, {"auroc": 0.99, "f1": 0.95}, class_counts=ENOUGH).promote  # within 0.02


def test_the_gate_refuses_a_split_too_small_to_measure_and_needs_to_know_its_size():
    from swan_anomaly.config import Settings
    from swan_anomaly.gate import MIN_IMAGES_PER_CLASS

    def min_images_per_class(env):
        return Settings.from_env(env).gate_min_images_per_class

    small = decide({"auroc": 1.0, "f1": 1.0}, None, class_counts={"abnormal": 24, "normal": 300})
    assert not small.passed and not small.promote and not small.measurable
    assert small.reasons == [
        "validation split too small to measure: 24 abnormal and 300 normal images, fewer than 25 per class; "
        "the gate refuses to decide on noise (gate_min_images_per_class)"
    ]
    assert decide({"auroc": 1.0, "f1": 1.0}, None, class_counts={"abnormal": 25, "normal": 25}).passed
    assert decide({"auroc": 1.0, "f1": 1.0}, None, GateMode.DRY_RUN, class_counts={"abnormal": 3, "normal": 3}).promote
    with pytest.raises(ValueError, match="class counts"):
        decide({"auroc": 1.0, "f1": 1.0}, None)
    assert min_images_per_class({}) == MIN_IMAGES_PER_CLASS == 25 and min_images_per_class({"SWAN_GATE_MIN_IMAGES_PER_CLASS": "40"}) == 40
    for bad in ("0", "-3", "ten", "2.5"):
        with pytest.raises(ValueError, match="SWAN_GATE_MIN_IMAGES_PER_CLASS must be a whole number"):
            min_images_per_class({"SWAN_GATE_MIN_IMAGES_PER_CLASS": bad})


def test_the_auroc_interval_is_seeded_holds_the_estimate_and_narrows_with_more_images():
    from sklearn.metrics import roc_auc_score

    from swan_anomaly.metrics import auroc_interval

    rng = np.random.default_rng(7)

    def sample(n: int):
        labels = np.repeat([0, 1], n)
        return labels, np.r_[rng.normal(1.0, 1.0, n), rng.normal(0.0, 1.0, n)]

    labels, scores = sample(20)
    low, high = auroc_interval(labels, scores, seed=3)
    point = roc_auc_score(labels == 0, scores)
    assert low < point < high and (low, high) == auroc_interval(labels, scores, seed=3)
    big_labels, big_scores = sample(400)
    big_low, big_high = auroc_interval(big_labels, big_scores, seed=3)
    assert big_high - big_low < (high - low) / 2  # about 1/sqrt(20) as wide
    # the true AUROC of two unit normals one sigma apart is Phi(1 / sqrt(2)) = 0.760
    assert big_low < 0.760 < big_high
    assert auroc_interval(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == (1.0, 1.0)
    with pytest.raises(ValidationDataError):
        auroc_interval(np.array([1, 1]), np.array([0.2, 0.3]))
    with pytest.raises(ValidationDataError, match="1 abnormal and 2 normal images: resampling needs two of each"):
        auroc_interval(np.array([0, 1, 1]), np.array([0.9, 0.2, 0.3]))
    from swan_anomaly.metrics import evaluation_report

    one = evaluation_report(np.array([0, 1, 1]), np.array([0.9, 0.2, 0.3]), threshold=0.5)
    assert one["auroc"] == 1.0 and one["auroc_ci"] is None and (one["abnormal"], one["normal"]) == (1, 2)


def test_endpoint_checks_parity_then_quality_and_an_outcome_follows_from_what_changed():
    from swan_anomaly.serving.validation import EndpointPolicy, Outcome, check_endpoint, outcome_for

    labels = np.repeat([0, 1], 30)
    good = np.r_[np.linspace(0.6, 0.99, 30), np.linspace(0.01, 0.4, 30)]
    policy = EndpointPolicy()
    ok = check_endpoint(labels, good, good + 5e-5, threshold=0.5, policy=policy)
    assert ok.passed and ok.parity and ok.measured and ok.report["auroc"] == 1.0 and ok.report["recall"] == 1.0
    assert ok.max_difference == pytest.approx(5e-5)
    assert outcome_for(ok, new_version=True, previous="3") is Outcome.PASSED

    drifted = check_endpoint(labels, good[::-1], good[::-1], threshold=0.5, policy=policy)  # abnormal now score low
    assert drifted.parity and not drifted.passed and "AUROC 0.0000" in drifted.reasons[0] and "recall 0.0000" in drifted.reasons[1]
    assert outcome_for(drifted, new_version=True, previous="3") is Outcome.ROLLED_BACK
    assert outcome_for(drifted, new_version=True, previous=None) is Outcome.WITHDRAWN
    assert outcome_for(drifted, new_version=False, previous=None) is Outcome.DRIFT

    skewed = good.copy()
    skewed[4] += 0.01
    mismatch = check_endpoint(labels, skewed, good, threshold=0.5, policy=policy)
    assert (
        not mismatch.parity
        and "1 of 60 scores differ from the registry model's by more than 0.0001 (worst 0.010000, image 4)" in mismatch.reasons[0]
    )
    assert outcome_for(mismatch, new_version=False, previous=None) is Outcome.MISMATCH
    assert outcome_for(mismatch, new_version=True, previous="3") is Outcome.ROLLED_BACK

    few = check_endpoint(labels[25:35], good[25:35], good[25:35], threshold=0.5, policy=policy)  # 5 abnormal, 5 normal
    assert few.passed and not few.measured and few.report is None and "held-out test split too small to measure" in few.note
    # no image at all: parity over nothing held vacuously and the check passed
    none = check_endpoint(labels[:0], good[:0], good[:0], threshold=0.5, policy=policy)
    assert not none.passed and not none.parity
    assert none.reasons == ["no held-out test images to validate the endpoint on: nothing was checked"]
    assert outcome_for(none, new_version=True, previous="3") is Outcome.ROLLED_BACK


def test_an_endpoint_that_serves_nan_fails_its_check_instead_of_crashing_it():
    """evaluation_report raised "Input contains NaN": a broken served model failed its validation with no reason given."""
    from swan_anomaly.serving.validation import EndpointPolicy, Outcome, check_endpoint, outcome_for

    labels = np.repeat([0, 1], 30)
    good = np.r_[np.linspace(0.6, 0.99, 30), np.linspace(0.01, 0.4, 30)]
    broken = good.copy()
    broken[[3, 30]] = np.nan  # a client reads NaN as "normal": NaN >= threshold is false
    why = (
        "the endpoint serves no finite anomaly_score for 2 of 60 held-out images (first image 3): "
        "a client reads NaN as normal (NaN >= threshold is false)"
    )
    # the registered model served as it is (NaN in the registry too), or another model: either way it fails, and so does the run
    for registry in (broken, good):
        check = check_endpoint(labels, broken, registry, threshold=0.5, policy=EndpointPolicy())
        assert not check.parity and not check.passed and not check.measured and check.report is None
        assert check.max_difference == np.inf and check.reasons[-1] == why
        assert outcome_for(check, new_version=True, previous="3") is Outcome.ROLLED_BACK
        assert outcome_for(check, new_version=False, previous=None) is Outcome.MISMATCH  # a broken champion is no mere drift
    # a split too small to judge quality on still checks this
    few = check_endpoint(labels[25:35], broken[25:35], broken[25:35], threshold=0.5, policy=EndpointPolicy())
    assert not few.passed and few.reasons[-1].startswith("the endpoint serves no finite anomaly_score for 1 of 10 held-out images")


def test_the_validation_record_of_a_broken_endpoint_is_json_without_nan_or_infinity():
    """validation.json recorded NaN scores and an Infinity difference: not JSON for jq, the MLflow UI or any strict parser."""
    import json

    from swan_airflow.context import RunContext
    from swan_airflow.steps.serving import _record
    from swan_anomaly.serving.validation import EndpointPolicy, Outcome, check_endpoint

    labels = np.array([0, 1])
    endpoint, registry = np.array([np.nan, 0.2]), np.array([0.9, 0.2])
    check = check_endpoint(labels, endpoint, registry, threshold=0.5, policy=EndpointPolicy())
    ctx = RunContext(dag_id="swan_anomaly_pipeline", run_id="manual__x", dataset_id="20261115", params={})
    rows = [["20261115", "a.png", 0, "cutpaste"], ["20261115", "b.png", 1, "none"]]
    scores = {"endpoint": endpoint, "registry": registry}
    record = _record(ctx, "m", "2", None, 0.5, rows, scores, check, Outcome.WITHDRAWN, "http://127.0.0.1:5055")
    json.dumps(record, allow_nan=False)  # raises on NaN or infinity
    assert record["max_difference"] is None and record["scores"] == [["a.png", 0, None, 0.9], ["b.png", 1, 0.2, 0.2]]


def test_a_parity_failure_of_a_reduced_precision_endpoint_says_which_tolerance_it_needs():
    """An int8 or bfloat16 CPU endpoint under the float32 tolerance fails parity; the reason must not read as a wrong model only."""
    from swan_anomaly.serving.validation import EndpointPolicy, check_endpoint

    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 30)
    registry = np.clip(np.where(labels == 0, 0.8, 0.2) + rng.normal(0, 0.05, 60), 0, 1)
    served = registry + rng.uniform(-0.06, 0.06, 60)  # as far as int8 moved the quality benchmark's scores
    int8 = EndpointPolicy.from_env({"SWAN_SERVING_CPU_PRECISION": "int8"})
    [reason] = check_endpoint(labels, served, registry, threshold=0.5, policy=int8).reasons
    assert "does not serve the registered model" in reason and "computes in int8" in reason and "about 0.1" in reason
    assert check_endpoint(labels, served, registry, threshold=0.5, policy=replace(int8, parity_tolerance=0.1)).passed
    [plain] = check_endpoint(labels, served, registry, threshold=0.5, policy=EndpointPolicy.from_env({})).reasons
    assert "SWAN_SERVING_CPU_PRECISION" not in plain  # a float32 endpoint that differs is a wrong model: no excuse offered
    gpu = {"SWAN_SERVING_CPU_PRECISION": "int8", "SWAN_SERVING_WORKLOAD_TYPE": "GPU_SMALL"}
    assert EndpointPolicy.from_env(gpu).cpu_precision == "float32"  # a GPU workload does not serve in the CPU precision


def test_endpoint_policy_reads_its_settings_and_refuses_bad_ones():
    from swan_anomaly import ConfigError
    from swan_anomaly.serving.validation import DriftAction, EndpointPolicy

    assert EndpointPolicy.from_env({}) == EndpointPolicy(0.9, 0.8, 1e-4, 25, DriftAction.WARN)
    env = {
        "SWAN_ENDPOINT_MIN_AUROC": "0.95",
        "SWAN_ENDPOINT_MIN_RECALL": "0.7",
        "SWAN_ENDPOINT_PARITY_TOLERANCE": "0.01",
        "SWAN_DRIFT_ACTION": "FAIL",
        "SWAN_MAX_FALSE_ALARM_RATE": "0.05",
    }
    assert EndpointPolicy.from_env(env) == EndpointPolicy(0.95, 0.7, 0.01, 25, DriftAction.FAIL, 0.05)
    bad = (("SWAN_ENDPOINT_MIN_AUROC", "1.5"), ("SWAN_ENDPOINT_MIN_RECALL", "high"), ("SWAN_DRIFT_ACTION", "ignore"))
    for name, value in (*bad, ("SWAN_MAX_FALSE_ALARM_RATE", "-0.1")):
        with pytest.raises(ConfigError, match=name):
            EndpointPolicy.from_env({name: value})


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


def test_the_endpoint_check_catches_a_novelty_score_that_differs_or_is_missing_on_one_side():
    from swan_anomaly.serving.validation import EndpointPolicy, check_endpoint

    labels = np.array([0] * 20 + [1] * 20)
    scores = np.r_[np.linspace(0.6, 0.99, 20), np.linspace(0.01, 0.4, 20)]
    novelty = np.r_[np.linspace(1.5, 4.0, 20), np.linspace(0.1, 0.9, 20)]
    policy = EndpointPolicy(min_images_per_class=10)
    same = check_endpoint(
        labels, scores, scores, threshold=0.5, policy=policy, endpoint_novelty=novelty * (1 + 1e-6), registry_novelty=novelty
    )
    assert same.passed and same.parity
    drifted = novelty.copy()
    drifted[3] += 0.5
    off = check_endpoint(labels, scores, scores, threshold=0.5, policy=policy, endpoint_novelty=drifted, registry_novelty=novelty)
    assert not off.parity and any("novelty" in r and "image 3" in r for r in off.reasons)
    lost = check_endpoint(
        labels, scores, scores, threshold=0.5, policy=policy, endpoint_novelty=np.full(40, np.nan), registry_novelty=novelty
    )
    assert not lost.parity and "40 of 40" in lost.reasons[0]
    neither = check_endpoint(
        labels, scores, scores, threshold=0.5, policy=policy, endpoint_novelty=np.full(40, np.nan), registry_novelty=np.full(40, np.nan)
    )
    assert neither.passed  # a version without a novelty bank: nothing to compare


def test_the_endpoint_check_refuses_a_served_decision_that_calls_most_normal_images_abnormal():
    """Recall and AUROC of anomaly_score passed a model whose served decision called every normal image abnormal.

    The decision a client acts on is ``anomaly_score >= threshold`` or ``novelty_score >= 1``: a
    broken novelty scale, or a threshold below every score, flags the normal frames while the
    anomaly_score's AUROC stays 1.0 and its recall can only rise.
    """
    from swan_anomaly.serving.validation import EndpointPolicy, Outcome, check_endpoint, outcome_for

    labels = np.repeat([0, 1], 30)
    scores = np.r_[np.linspace(0.6, 0.99, 30), np.linspace(0.01, 0.4, 30)]
    novelty = np.r_[np.full(30, 2.0), np.linspace(0.1, 0.9, 30)]
    policy = EndpointPolicy()
    broken = novelty.copy()
    broken[30:50] = 1.3  # the bank's scale is off: 20 of the 30 normal images cross novelty_score 1
    flagged = check_endpoint(labels, scores, scores, threshold=0.5, policy=policy, endpoint_novelty=broken, registry_novelty=broken)
    assert flagged.parity and flagged.report["auroc"] == 1.0 and flagged.report["recall"] == 1.0
    assert not flagged.passed, "a decision that calls 2 of 3 normal images abnormal passed"
    assert flagged.report["decision_false_alarms"] == 20 and policy.max_false_alarm_rate == 0.5
    assert flagged.reasons == [
        "the served decision (anomaly_score >= 0.5000 or novelty_score >= 1) calls 20 of 30 held-out normal images abnormal "
        "(66.7%), more than 50.0% (SWAN_MAX_FALSE_ALARM_RATE)"
    ]
    assert outcome_for(flagged, new_version=True, previous="3") is Outcome.ROLLED_BACK
    assert outcome_for(flagged, new_version=False, previous=None) is Outcome.DRIFT  # the unchanged champion: today's normals
    sound = check_endpoint(labels, scores, scores, threshold=0.5, policy=policy, endpoint_novelty=novelty, registry_novelty=novelty)
    assert sound.passed and sound.report["decision_false_alarms"] == 0 and sound.report["decision_false_alarm_rate"] == 0.0

    everything = check_endpoint(labels, scores, scores, threshold=0.005, policy=policy)  # a threshold below every score
    assert everything.report["recall"] == 1.0 and not everything.passed and "30 of 30" in everything.reasons[0]

    # the bound is the deployment's: at it passes, above it fails; a version without a novelty bank is judged on its classifier
    tight = EndpointPolicy(max_false_alarm_rate=0.2)
    at = np.r_[np.full(30, 0.9), np.full(6, 0.6), np.full(24, 0.1)]  # 6 of 30 normal images over the threshold
    assert check_endpoint(labels, at, at, threshold=0.5, policy=tight).passed
    assert check_endpoint(labels, at, at, threshold=0.5, policy=tight, endpoint_novelty=np.full(60, np.nan)).passed
    over = at.copy()
    over[36] = 0.6
    assert "7 of 30" in check_endpoint(labels, over, over, threshold=0.5, policy=tight).reasons[0]


def test_the_gate_bounds_the_share_of_normal_images_the_served_decision_calls_abnormal():
    counts = {"abnormal": 40, "normal": 40}
    good = {"auroc": 0.99, "f1": 0.95}
    assert decide(good | {"decision_false_alarm_rate": 0.5}, None, class_counts=counts, max_false_alarm_rate=0.5).passed
    over = decide(good | {"decision_false_alarm_rate": 0.55}, None, class_counts=counts, max_false_alarm_rate=0.5)
    assert not over.passed and over.reasons == [
        "the served decision (anomaly_score >= threshold or novelty_score >= 1) calls 55.0% of the normal images abnormal, "
        "more than 50.0% (SWAN_MAX_FALSE_ALARM_RATE)"
    ]
    nan = decide(good | {"decision_false_alarm_rate": float("nan")}, None, class_counts=counts, max_false_alarm_rate=0.5)
    assert "calls nan of" in nan.reasons[0]
    assert "calls an unmeasured share of" in decide(good, None, class_counts=counts, max_false_alarm_rate=0.5).reasons[0]
    assert decide(good, None, class_counts=counts).passed  # without a bound the rate is not judged


def _walk_a_line(steps: list[tuple[str, float, float]]) -> tuple[list[bool], object]:
    """Gate each ``(version, auroc, f1)`` against the champion before it and its line, as gate_model does; stop at a refusal."""
    from swan_anomaly.gate import next_references

    counts = {"abnormal": 40, "normal": 40}
    measured = {v: {"auroc": a, "f1": f, "version": v} for v, a, f in steps}  # each version's metrics on the same rows
    champion, line, verdicts, decision = None, {}, [], None
    for version, _, _ in steps:
        challenger = {k: measured[version][k] for k in ("auroc", "f1")}
        references = {m: measured[v] for m, v in line.items() if champion is None or v != champion["version"]}
        decision = decide(challenger, champion, class_counts=counts, references=references)
        verdicts.append(decision.passed)
        if not decision.passed:
            break
        line = next_references(version, challenger, champion, references)
        champion = measured[version]
    return verdicts, decision


def test_regressions_within_the_tolerance_do_not_add_up_along_a_line_of_champions():
    """Each challenger 0.02 below its champion passed: 0.99, 0.97, 0.95, 0.93 in three promotions."""
    verdicts, decision = _walk_a_line([("1", 0.99, 0.9), ("2", 0.97, 0.9), ("3", 0.95, 0.9), ("4", 0.93, 0.9)])
    assert verdicts == [True, True, False], "the third step down passed"
    assert decision.reasons == [
        "auroc 0.9500 regresses against v1's 0.9900 on the same rows by more than 0.02 "
        "(v1 is the best auroc of the champion's line: small regressions must not add up)"
    ]


def test_each_metric_keeps_its_own_line():
    """One reference per line, chosen by AUROC, let F1 slide while AUROC held: 0.95, 0.93, 0.91, 0.89."""
    steps = [("1", 0.99, 0.90), ("2", 0.975, 0.95), ("3", 0.975, 0.93), ("4", 0.975, 0.91), ("5", 0.975, 0.89)]
    verdicts, decision = _walk_a_line(steps)
    assert verdicts == [True, True, True, False], "F1 slid 0.95, 0.93, 0.91 under a reference chosen by AUROC"
    assert decision.reasons == [
        "f1 0.9100 regresses against v2's 0.9500 on the same rows by more than 0.02 "
        "(v2 is the best f1 of the champion's line: small regressions must not add up)"
    ]


def test_the_line_moves_on_at_a_tie_and_a_broken_reference_is_no_bar():
    from swan_anomaly.gate import next_references

    champion = {"auroc": 0.97, "f1": 0.9, "version": "2"}
    assert next_references("5", {"auroc": 0.97, "f1": 0.9}, champion, {}) == {"auroc": "5", "f1": "5"}
    first = {"auroc": 0.99, "f1": 0.8, "version": "1"}
    assert next_references("5", {"auroc": 0.98, "f1": 0.95}, champion, {"auroc": first, "f1": first}) == {"auroc": "1", "f1": "5"}
    assert next_references("5", {"auroc": float("nan"), "f1": None}, champion, {}) == {"auroc": "2", "f1": "2"}
    assert next_references("1", {"auroc": 0.9, "f1": 0.9}, None, {}) == {"auroc": "1", "f1": "1"}
    # a reference whose metric is not a number does not serve: it bars nothing (the champion still does)
    broken = {"auroc": float("nan"), "f1": 0.9, "version": "1"}
    counts = {"abnormal": 40, "normal": 40}
    assert decide({"auroc": 0.96, "f1": 0.9}, champion, class_counts=counts, references={"auroc": broken}).passed
    assert not decide({"auroc": 0.94, "f1": 0.9}, champion, class_counts=counts, references={"auroc": broken}).passed


def test_a_metric_that_is_not_a_number_never_passes_the_gate():
    """NaN compares False with anything: ``nan < 0.9`` is False, so a NaN AUROC passed every threshold."""
    nan = float("nan")
    decision = decide({"auroc": nan, "f1": nan}, None, GateMode.ENABLED, class_counts=ENOUGH)
    assert not decision.passed and not decision.promote
    assert decision.reasons == ["auroc nan < 0.9000", "f1 nan < 0.8000"]
    # a NaN on either side of the comparison with the champion refuses too, instead of skipping it
    good = {"auroc": 0.99, "f1": 0.95}
    assert not decide(good, {"auroc": nan, "f1": 0.9}, GateMode.ENABLED, class_counts=ENOUGH).passed
    assert not decide({"auroc": 0.99, "f1": nan}, {"auroc": 0.95, "f1": 0.9}, GateMode.ENABLED, class_counts=ENOUGH).passed
    assert decide(good, {"auroc": 0.95, "f1": 0.9}, GateMode.ENABLED, class_counts=ENOUGH).passed  # finite and better: passes


def test_the_auroc_interval_resamples_whole_groups_so_near_duplicate_frames_add_no_precision():
    """A split group is one time block: its frames are near-duplicates, not independent draws. Resampling images, the same
    40 images repeated 8 times gave an interval 2.8 times narrower than the 40 did: precision the data does not hold."""
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 20)
    scores = np.concatenate([rng.normal(1, 1, 20), rng.normal(0, 1, 20)])
    groups = np.arange(40)
    low, high = auroc_interval(labels, scores, groups=groups, seed=3)
    low8, high8 = auroc_interval(np.repeat(labels, 8), np.repeat(scores, 8), groups=np.repeat(groups, 8), seed=3)
    assert (low8, high8) == pytest.approx((low, high))
    images_low, images_high = auroc_interval(np.repeat(labels, 8), np.repeat(scores, 8), seed=3)  # image by image: too narrow
    assert high8 - low8 > 2 * (images_high - images_low)
    assert low < 0.7575 < high  # around the AUROC of the data
    # the report says how many groups the interval resampled, and shows them
    report = evaluation_report(np.repeat(labels, 8), np.repeat(scores, 8), threshold=0.5, seed=3, groups=np.repeat(groups, 8))
    assert report["groups"] == 40 and report["auroc_ci"] == pytest.approx([low8, high8])
    assert "n=160/160 in 40 groups" in format_auroc(report)
    with pytest.raises(ValidationDataError, match="over 1 group"):
        auroc_interval(labels, scores, groups=np.zeros(40))


def test_the_gate_compares_the_challenger_s_served_f1_out_of_sample():
    """The gate's rows are the challenger's validation split, where its stored threshold was chosen: its F1 there is
    in-sample, the champion's (a threshold chosen elsewhere) is not. A challenger whose served F1 was below the champion's
    passed on its in-sample 0.85 against 0.80; its threshold chosen on half the groups and judged on the other half says 0.70."""
    counts = {"abnormal": 40, "normal": 40}
    challenger = {"auroc": 0.95, "f1": 0.85, "f1_held_out": 0.70}
    champion = {"auroc": 0.96, "f1": 0.80, "f1_held_out": 0.80, "version": "3"}
    refused = decide(challenger, champion, GateMode.ENABLED, class_counts=counts)
    assert not refused.passed and refused.reasons == [
        "f1_held_out 0.7000 regresses against the champion's 0.8000 on the same rows by more than 0.02"
    ]
    # a champion serving at a stale threshold is replaced by a challenger that serves better out of sample
    assert decide({**challenger, "f1_held_out": 0.81}, {**champion, "f1": 0.70, "f1_held_out": 0.70}, class_counts=counts).passed
    # records without it (rows without groups, or a reference judged before it existed) compare stored-threshold F1, as before
    assert decide(challenger, {k: v for k, v in champion.items() if k != "f1_held_out"}, class_counts=counts).passed
    # the line keeps its best by the same measure, also when the champion is broken (it carries no metric at all)
    assert next_references("5", challenger, champion, {}) == {"auroc": "3", "f1": "3"}
    reference = {"auroc": 0.97, "f1": 0.80, "f1_held_out": 0.80, "version": "2"}
    line = next_references("5", {**challenger, "f1_held_out": 0.79}, {"version": "4", "broken": "NaN"}, {"f1": reference})
    assert line["f1"] == "2"  # 0.79 held out is below v2's 0.80, though its in-sample 0.85 is above


def test_the_cross_fitted_f1_takes_the_optimism_out_of_a_threshold_tuned_on_the_same_rows():
    labels = np.repeat(np.array([0, 1] * 20), 4)  # 40 groups of 4 frames, one class each
    groups = np.repeat(np.arange(40), 4)
    gaps = []
    for seed in range(6):  # a middling model, its scores per group
        scores = np.repeat(np.random.default_rng(seed).normal(0, 1, 40), 4) + np.where(labels == 0, 1.0, 0.0)
        in_sample = anomaly_metrics(labels, scores, threshold=choose_threshold(labels, scores))["f1"]
        gaps.append(in_sample - cross_fitted_f1(labels, scores, groups))
    assert min(gaps) >= 0 and np.mean(gaps) > 0.05  # here never above the in-sample F1, and well below it on average
    perfect = np.where(labels == 0, 0.9, 0.1)
    assert cross_fitted_f1(labels, perfect, groups) == 1.0
    assert cross_fitted_f1(labels, perfect, np.zeros(len(labels))) is None  # one group: nothing to judge it by
