"""Endpoint validation: does the endpoint serve exactly the registered model, and does it detect?

Two checks on the held-out test split, scored through the endpoint:

* **parity**: each image's ``anomaly_score`` from the endpoint equals the registry model's own
  score (the pyfunc loaded from the registry, on the same bytes) within ``parity_tolerance``.
  It proves the endpoint serves the registered weights and preprocessing, on every deploy.
* **quality**: AUROC (with its bootstrap interval) and recall at the version's stored
  threshold, against ``min_auroc`` and ``min_recall``; and the share of the normal images that
  the served decision (``anomaly_score >= threshold`` or ``novelty_score >= 1``, what a client acts
  on) calls abnormal, against ``max_false_alarm_rate``: recall alone passes a model that calls
  everything abnormal. A test split with fewer than ``min_images_per_class`` images of either
  class is reported as too small to measure and not judged (parity still is).

What a failure means depends on what changed (:func:`outcome_for`):

* a new version (one that never passed an endpoint validation) fails either check: it is rolled back to the previous champion
  (``rolled_back``) or, when there is none, withdrawn (``withdrawn``: the endpoint is deleted
  and the version loses the champion alias, so a model that failed never serves silently);
* the unchanged champion does not separate today's held-out data: ``drift``, reported and sent
  to the notifier; ``SWAN_DRIFT_ACTION`` says whether the run then warns or fails;
* the unchanged champion's endpoint does not match the registry, or cannot be validated:
  ``mismatch``, always a failure (nothing to roll back to: the run did not change it).

Example:
    >>> import numpy as np
    >>> check = check_endpoint(np.array([0, 1]), np.array([0.9, 0.1]), np.array([0.9, 0.1]), threshold=0.5,
    ...                        policy=EndpointPolicy(min_images_per_class=1))
    >>> check.passed, outcome_for(check, new_version=True, previous=None)
    (True, <Outcome.PASSED: 'passed'>)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from swan_anomaly.config import PARITY_TOLERANCE_FOR, Settings
from swan_anomaly.contract import ABNORMAL, LABEL_NAMES, NORMAL
from swan_anomaly.gate import MIN_IMAGES_PER_CLASS, too_small
from swan_anomaly.metrics import decision_false_alarms, evaluation_report, format_interval


class Outcome(StrEnum):
    PASSED = "passed"  # the endpoint serves the registered model and it detects on held-out data
    ROLLED_BACK = "rolled_back"  # this run's new version failed; the previous champion serves again
    WITHDRAWN = "withdrawn"  # this run's first version failed; nothing serves (endpoint deleted)
    DRIFT = "drift"  # the unchanged champion no longer separates today's held-out data
    MISMATCH = "mismatch"  # the unchanged champion's endpoint does not serve what the registry holds, or fails to score


#: Outcomes that fail the run; each is decided once per challenger.
FAILED_OUTCOMES = frozenset({Outcome.ROLLED_BACK, Outcome.WITHDRAWN, Outcome.MISMATCH})


class DriftAction(StrEnum):
    WARN = "warn"  # report, notify, and let the run succeed
    FAIL = "fail"  # report, notify, and fail the run


@dataclass(frozen=True)
class EndpointPolicy:
    """What the endpoint must show on the held-out test split (environment: :meth:`from_env`)."""

    min_auroc: float = Settings.endpoint_min_auroc
    min_recall: float = Settings.endpoint_min_recall
    parity_tolerance: float = Settings.endpoint_parity_tolerance
    min_images_per_class: int = MIN_IMAGES_PER_CLASS
    drift_action: DriftAction = DriftAction.WARN
    max_false_alarm_rate: float = Settings.max_false_alarm_rate
    #: What a CPU endpoint computes in (``SWAN_SERVING_CPU_PRECISION``): a parity failure under a tolerance too tight for it says so.
    cpu_precision: str = Settings.serving_cpu_precision

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EndpointPolicy:
        """``SWAN_ENDPOINT_MIN_AUROC`` (0.90), ``SWAN_ENDPOINT_MIN_RECALL`` (0.80), ``SWAN_MAX_FALSE_ALARM_RATE``
        (0.50), ``SWAN_ENDPOINT_PARITY_TOLERANCE``
        (1e-4; a GPU workload type serving in bfloat16 needs about 1e-2), ``SWAN_DRIFT_ACTION`` (``warn`` or
        ``fail``). ``min_images_per_class`` keeps its default: a run sets it from its ``gate_min_images_per_class``.

        Raises:
            ConfigError: a value is not a number in range, or not a known drift action.
        """
        s = Settings.from_env(env)
        return cls(
            min_auroc=s.endpoint_min_auroc,
            min_recall=s.endpoint_min_recall,
            max_false_alarm_rate=s.max_false_alarm_rate,
            parity_tolerance=s.endpoint_parity_tolerance,
            drift_action=DriftAction(s.drift_action),
            cpu_precision=s.serving_cpu_precision if s.serving_workload_type.upper().startswith("CPU") else "float32",
        )


@dataclass(frozen=True)
class EndpointCheck:
    """The two checks on one set of held-out images.

    ``max_difference``: the largest ``|endpoint - registry|`` score (None when nothing was scored); ``report``: the endpoint
    scores' :func:`swan_anomaly.metrics.evaluation_report` (None when the split is too small
    to measure); ``reasons``: every failed check, parity first.
    """

    parity: bool
    max_difference: float | None
    measured: bool
    report: dict | None
    reasons: list[str] = field(default_factory=list)
    note: str | None = None

    @property
    def passed(self) -> bool:
        return not self.reasons


def _precision_hint(policy: EndpointPolicy) -> str:
    """What to change when the endpoint serves in a reduced CPU precision under a tighter tolerance; else ''."""
    suggested = PARITY_TOLERANCE_FOR.get(policy.cpu_precision)
    if suggested is None or policy.parity_tolerance >= suggested:
        return ""
    return (
        f"; the endpoint computes in {policy.cpu_precision} (SWAN_SERVING_CPU_PRECISION), which moves single scores further than "
        f"that: with it, set SWAN_ENDPOINT_PARITY_TOLERANCE to about {suggested:g}"
    )


def check_endpoint(
    labels: np.ndarray,
    endpoint_scores: np.ndarray,
    registry_scores: np.ndarray,
    *,
    threshold: float,
    policy: EndpointPolicy,
    seed: int = 0,
    endpoint_novelty: np.ndarray | None = None,
    registry_novelty: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> EndpointCheck:
    """Parity of endpoint and registry scores, then quality of the endpoint's scores at ``threshold``.

    Args:
        labels: ``[N]``, 0 = abnormal, 1 = normal.
        endpoint_scores: ``[N]`` anomaly scores from the endpoint.
        registry_scores: ``[N]`` anomaly scores of the same images from the registry model.
        threshold: the served version's stored threshold.
        policy: the limits.
        seed: seed of the AUROC interval.
        endpoint_novelty, registry_novelty: ``[N]`` novelty scores of both (NaN where a side serves
            none); when given, they must agree within the same tolerance, relative to the registry's
            score (the novelty score is not bounded by 1), and be missing on both sides or neither.
        groups: ``[N]`` split groups of the images, which the AUROC interval resamples whole (None: image by image).
    """
    labels = np.asarray(labels)
    if len(labels) == 0:  # parity over no image holds vacuously: say that nothing was checked
        return EndpointCheck(False, None, False, None, ["no held-out test images to validate the endpoint on: nothing was checked"])
    endpoint_scores = np.asarray(endpoint_scores, dtype=np.float64)
    # a score that is not a number matches nothing, not even the registry's own NaN: no parity, whatever the split's size
    with np.errstate(invalid="ignore"):
        difference = np.nan_to_num(np.abs(endpoint_scores - np.asarray(registry_scores, dtype=np.float64)), nan=np.inf)
    max_difference = float(difference.max()) if len(difference) else 0.0
    reasons = []
    parity = max_difference <= policy.parity_tolerance
    if not parity:
        worst = int(difference.argmax())
        reasons.append(
            f"the endpoint does not serve the registered model: {int((difference > policy.parity_tolerance).sum())} of {len(labels)} "
            f"scores differ from the registry model's by more than {policy.parity_tolerance:g} (worst {max_difference:.6f}, image {worst})"
            + _precision_hint(policy)
        )
    if endpoint_novelty is not None and registry_novelty is not None:
        served, registered = np.asarray(endpoint_novelty, dtype=np.float64), np.asarray(registry_novelty, dtype=np.float64)
        missing = np.isnan(served) != np.isnan(registered)
        off = missing | (np.abs(served - registered) > policy.parity_tolerance * np.maximum(1.0, np.abs(registered)))
        if off.any():
            parity = False
            worst = int(np.flatnonzero(off)[0])
            reasons.append(
                f"the endpoint does not serve the registered model's novelty score: {int(off.sum())} of {len(labels)} novelty scores "
                f"differ or are missing on one side (first image {worst}: endpoint {served[worst]:.6f}, registry {registered[worst]:.6f})"
            )
    broken = np.flatnonzero(~np.isfinite(endpoint_scores))
    if len(broken):  # a broken served model: it fails as a mismatch does (a run with an unchanged champion fails too)
        reasons.append(
            f"the endpoint serves no finite anomaly_score for {len(broken)} of {len(labels)} held-out images (first image "
            f"{int(broken[0])}): a client reads NaN as normal (NaN >= threshold is false)"
        )
        return EndpointCheck(False, max_difference, False, None, reasons, note="quality not judged: the scores are not all numbers")
    counts = {LABEL_NAMES[ABNORMAL]: int((labels == ABNORMAL).sum()), LABEL_NAMES[NORMAL]: int((labels == NORMAL).sum())}
    small = too_small(counts, policy.min_images_per_class, split="held-out test")
    if small:
        return EndpointCheck(parity, max_difference, False, None, reasons, note=f"{small}; quality not judged, parity checked")
    report = evaluation_report(labels, endpoint_scores, threshold=threshold, seed=seed, groups=groups)
    false_alarms = decision_false_alarms(labels, endpoint_scores, endpoint_novelty, threshold=threshold)
    report["decision_false_alarms"], report["decision_false_alarm_rate"] = false_alarms
    if report["auroc"] < policy.min_auroc:
        reasons.append(
            f"AUROC {report['auroc']:.4f} (95% CI {format_interval(report['auroc_ci'])}) < "
            f"{policy.min_auroc:.4f} on {len(labels)} held-out images"
        )
    if report["recall"] < policy.min_recall:
        reasons.append(f"recall {report['recall']:.4f} at the stored threshold {threshold:.4f} < {policy.min_recall:.4f}")
    if not report["decision_false_alarm_rate"] <= policy.max_false_alarm_rate:
        reasons.append(
            f"the served decision (anomaly_score >= {threshold:.4f} or novelty_score >= 1) calls {report['decision_false_alarms']} of "
            f"{report['normal']} held-out normal images abnormal ({report['decision_false_alarm_rate']:.1%}), more than "
            f"{policy.max_false_alarm_rate:.1%} (SWAN_MAX_FALSE_ALARM_RATE)"
        )
    return EndpointCheck(parity, max_difference, True, report, reasons)


def outcome_for(check: EndpointCheck, *, new_version: bool, previous: str | None) -> Outcome:
    """What a check means for the run.

    Args:
        check: the checks of the served version.
        new_version: the served version never passed an endpoint validation (this run's
            challenger, or one whose endpoint update failed before); else it is the unchanged
            champion, judged for drift.
        previous: the version to roll back to (the previous champion), or None.
    """
    if check.passed:
        return Outcome.PASSED
    if new_version:
        return Outcome.ROLLED_BACK if previous else Outcome.WITHDRAWN
    return Outcome.DRIFT if check.parity else Outcome.MISMATCH
