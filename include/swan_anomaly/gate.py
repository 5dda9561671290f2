"""The promotion gate: its thresholds, three modes, one decision on the same rows.

Where each bar lives: the gate's own (AUROC 0.90, F1 0.80, the 0.02 regression allowance) here
(:func:`promotion_thresholds`, :data:`MAX_REGRESSION`), which the trigger form's Params start
from; the deployment's (images per class, the false-alarm rate, the endpoint's AUROC, recall and
parity) in :class:`swan_anomaly.config.Settings`; and the smaller bar under which any report
calls a split too small to measure at all in :data:`swan_anomaly.metrics.MIN_MEASURABLE_PER_CLASS`.

The challenger and the current champion are scored on the same images (the challenger's
validation split, raw frames through each model's own served preprocessing), each at its own
stored threshold (:func:`swan_anomaly.scoring.score_rows`, :func:`swan_anomaly.metrics.evaluation_report`);
the challenger's F1 is compared out of sample, as :data:`COMPARED_AS` says.
A challenger is promoted when those metrics pass the absolute thresholds and do not fall more
than ``max_regression`` below the champion's, when its served decision calls at most
``max_false_alarm_rate`` of the normal images abnormal, and when its data is not older than the
champion's: a backfill of an old date is judged on that date's rows, which it was trained beside
and the champion never saw, so it could replace a model of newer data on stale evidence. The
tolerance does not add up along a line of champions: a challenger is also held to the
best version of the champion's line in each metric (:func:`next_references`), scored on the same
rows, so three small regressions in a row cannot take 0.99 down to 0.93. A validation split with fewer than
``min_images_per_class`` images of either class cannot tell models apart: the gate refuses
rather than decide on noise.

Example:
    >>> decide({"auroc": 0.99, "f1": 0.95}, None, GateMode.ENABLED, class_counts={"abnormal": 40, "normal": 40}).passed
    True
    >>> decide({"auroc": 0.70, "f1": 0.95}, None, GateMode.ENABLED, class_counts={"abnormal": 40, "normal": 40}).reasons
    ['auroc 0.7000 < 0.9000']
    >>> decide({"auroc": 1.0, "f1": 1.0}, None, class_counts={"abnormal": 8, "normal": 8}).reasons[0][:40]
    'validation split too small to measure: 8'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

from swan_anomaly.config import Settings


#: The metrics whose line the gate keeps (:func:`next_references`): those compared with the champion.
LINE_METRICS = ("auroc", "f1")
#: What stands for a metric when two models are compared on the same rows, where both carry it. The rows are the
#: challenger's validation split, where its stored threshold was chosen: its F1 there is in-sample, and favoured it by about
#: twice the tolerance on 32/32 images. ``f1_held_out`` is the challenger's served F1 without that optimism (its threshold
#: chosen on one half of the groups, judged on the other: :func:`swan_anomaly.metrics.cross_fitted_f1`) and the champion's
#: and references' F1 at their stored thresholds, chosen elsewhere. The absolute F1 bar keeps the stored threshold.
COMPARED_AS = {"f1": "f1_held_out"}


def compared(metrics_of: Mapping, other: Mapping, name: str) -> str:
    """The key compared for metric ``name`` between ``metrics_of`` and ``other``: :data:`COMPARED_AS`'s where both carry it.

    Example:
        >>> compared({"f1": 0.9, "f1_held_out": 0.85}, {"f1": 0.8, "f1_held_out": 0.8}, "f1"), compared({"f1": 0.9}, {"f1": 0.8}, "f1")
        ('f1_held_out', 'f1')
    """
    key = COMPARED_AS.get(name)
    return key if key and metrics_of.get(key) is not None and other.get(key) is not None else name


class GateMode(StrEnum):
    DISABLED = "disabled"  # promote whatever was trained (the DAG treats it as an override of the gate, as force_promote)
    DRY_RUN = "dry_run"  # evaluate and log, and promote anyway (the DAG: only with a force_promote_reason when it failed)
    ENABLED = "enabled"  # promote only what passes


def gate_mode(value: GateMode | str | None) -> GateMode:
    """The gate mode a run's ``gate_mode`` Param names; empty (``None``, what the trigger form's clear button sends) enforces.

    Example:
        >>> gate_mode("dry_run"), gate_mode(None)
        (<GateMode.DRY_RUN: 'dry_run'>, <GateMode.ENABLED: 'enabled'>)

    Raises:
        ValueError: ``value`` names no mode.
    """
    return GateMode.ENABLED if value is None else GateMode(value)


@dataclass(frozen=True)
class MinThreshold:
    minimum: float


def promotion_thresholds() -> dict[str, MinThreshold]:
    """Absolute validation thresholds (anomaly class positive)."""
    return {"auroc": MinThreshold(0.90), "f1": MinThreshold(0.80)}


#: A challenger may fall this far below the champion's metric on the same rows and still pass.
MAX_REGRESSION = 0.02
#: Fewer validation (or test) images than this in either class are too few to measure a model by
#: (the default of ``SWAN_GATE_MIN_IMAGES_PER_CLASS``).
MIN_IMAGES_PER_CLASS: int = Settings.gate_min_images_per_class


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided and why.

    ``challenger`` and ``champion`` are the metrics each scored on the same rows (``champion``
    None when there is none to compare with); ``measurable`` is False when the split was too
    small to decide on.
    """

    passed: bool
    promote: bool
    mode: str
    reasons: list[str] = field(default_factory=list)
    challenger: dict = field(default_factory=dict)
    champion: dict | None = None
    measurable: bool = True


def too_small(class_counts: Mapping[str, int], minimum: int, *, split: str = "validation") -> str | None:
    """Why a split with ``class_counts`` (``{"abnormal": n, "normal": m}``) is too small to measure, or None.

    Example:
        >>> too_small({"abnormal": 30, "normal": 12}, 25)
        'validation split too small to measure: 30 abnormal and 12 normal images, fewer than 25 per class'
    """
    abnormal, normal = int(class_counts.get("abnormal", 0)), int(class_counts.get("normal", 0))
    if min(abnormal, normal) >= minimum:
        return None
    return f"{split} split too small to measure: {abnormal} abnormal and {normal} normal images, fewer than {minimum} per class"


def next_references(
    version: str,
    challenger: Mapping,
    champion: Mapping | None,
    references: Mapping[str, Mapping],
    *,
    metrics: tuple[str, ...] = LINE_METRICS,
) -> dict[str, str]:
    """Metric -> the version a challenger's own challengers will be held to once it is champion (its gate reference tag).

    Per metric, the best on the same rows of the challenger, the champion and the champion's
    reference for that metric: the challenger when it is at least as good as both (a tie moves the
    line on), else the better of the other two (the champion on a tie). So each metric's line keeps
    its best, and regressions within the tolerance cannot add up in either. ``champion`` and each
    reference carry their ``version``; a metric that is missing or not a number is never the best.

    Example:
        >>> next_references("5", {"auroc": 0.97, "f1": 0.95}, {"auroc": 0.98, "f1": 0.9, "version": "4"}, {})
        {'auroc': '4', 'f1': '5'}
    """

    def value(metrics_of: Mapping | None, m: str) -> float:
        key = COMPARED_AS.get(m)  # what decide() compares, where every model in play (one that carries the metric) carries it
        in_play = [a for a in (challenger, champion, references.get(m)) if a is not None and a.get(m) is not None]
        key = key if key and all(a.get(key) is not None for a in in_play) else m
        v = None if metrics_of is None else metrics_of.get(key)
        return v if v is not None and math.isfinite(v) else -math.inf

    out = {}
    for m in metrics:
        others = [a for a in (champion, references.get(m)) if a is not None and value(a, m) > -math.inf]
        best = max(others, key=lambda a: value(a, m), default=None)  # the first of equals: the champion
        out[m] = str(version) if best is None or value(challenger, m) >= value(best, m) else str(best["version"])
    return out


def decide(
    challenger: dict,
    champion: dict | None,
    mode: GateMode | str = GateMode.ENABLED,
    *,
    thresholds: dict[str, MinThreshold] | None = None,
    max_regression: float = MAX_REGRESSION,
    class_counts: Mapping[str, int] | None = None,
    min_images_per_class: int = MIN_IMAGES_PER_CLASS,
    data_dates: tuple[date | None, date | None] = (None, None),
    max_false_alarm_rate: float | None = None,
    references: Mapping[str, Mapping] | None = None,
) -> GateDecision:
    """Compare the challenger's metrics with the thresholds and with the champion's on the same rows.

    Args:
        challenger: metrics of the challenger (``auroc``, ``f1``, optionally ``unseen_auroc`` and
            ``decision_false_alarm_rate``), and ``broken``: why its scores are unusable (NaN or infinite
            for some images), or None. A broken challenger is refused.
        champion: the champion's metrics on the same rows, or None (no champion, or the
            challenger already is the champion). Only metrics both carry are compared: a champion
            whose scores are broken comes without metrics (and with ``broken``), so it bars nothing
            while its line's ``references`` still do.
        mode: :class:`GateMode`; ``dry_run`` and ``disabled`` promote whatever the outcome (the DAG's
            ``gate_model`` asks such an override for what ``force_promote`` needs).
        thresholds: absolute minimums by metric name (default :func:`promotion_thresholds`).
        max_regression: how far below the champion a metric may fall.
        class_counts: ``{"abnormal": n, "normal": m}`` of the scored rows; required.
        min_images_per_class: fewer images than this in either class refuses the challenger.
        data_dates: the dates of the newest data the challenger and the champion were trained on
            (None where unknown); a challenger of older data than the champion's is refused.
        max_false_alarm_rate: the largest share of the normal images the challenger's served decision
            (``anomaly_score >= threshold`` or ``novelty_score >= 1``) may call abnormal, its
            ``decision_false_alarm_rate``; None: not judged. AUROC and F1 of ``anomaly_score``
            alone pass a model whose novelty score flags every frame. On the validation rows,
            where the threshold and the novelty scale were chosen, the rate sits near its
            calibration target by construction: this catches a decision broken between fitting and
            serving; the endpoint validation's bound on the held-out test rows is the real measure.
        references: metric -> the metrics, on the same rows, of the best version of the champion's line in
            that metric (with its ``version``: :func:`next_references`); the challenger may not fall more
            than ``max_regression`` below it in that metric either. A reference whose metric is not a
            number is no bar (it does not serve: nothing else would show it broken).
    Raises:
        ValueError: ``class_counts`` is missing (a decision needs to know what it measured).
    """
    mode = GateMode(mode)
    thresholds = promotion_thresholds() if thresholds is None else thresholds
    if class_counts is None:
        msg = "decide() needs the class counts of the rows the metrics were measured on"
        raise ValueError(msg)
    reasons = []
    small = too_small(class_counts, min_images_per_class)
    if small:
        reasons.append(f"{small}; the gate refuses to decide on noise (gate_min_images_per_class)")
    if challenger.get("broken"):
        reasons.append(
            f"the challenger is broken: {challenger['broken']}; a client reads a NaN anomaly_score as normal " "(NaN >= threshold is false)"
        )
    for name, t in thresholds.items():
        value = challenger.get(name)
        if value is None or not math.isfinite(value) or value < t.minimum:  # NaN compares False with anything: refuse it
            reasons.append(f"{name} {value if value is None else f'{value:.4f}'} < {t.minimum:.4f}")
    anchors = [] if champion is None else [("the champion", "the champion's", champion, tuple(thresholds), "")]
    for m, ref in (references or {}).items() if champion is not None else ():
        if ref.get(m) is None or not math.isfinite(ref[m]):  # a reference does not serve: broken, it bars nothing
            continue
        who = f"v{ref.get('version')}"
        note = f" ({who} is the best {m} of the champion's line: small regressions must not add up)"
        anchors.append((who, f"{who}'s", ref, (m,), note))
    for who, whose, anchor, names, note in anchors:
        for name in names:
            key = compared(challenger, anchor, name)  # F1 at each model's best threshold on these rows
            c, p = challenger.get(key), anchor.get(key)
            if c is None or p is None:
                continue
            if not math.isfinite(p):
                reasons.append(f"{key} of {who} is {p} on the same rows: the challenger cannot be compared with it")
            elif not math.isfinite(c) or c < p - max_regression:
                reasons.append(f"{key} {c:.4f} regresses against {whose} {p:.4f} on the same rows by more than {max_regression}{note}")
    if max_false_alarm_rate is not None:
        rate = challenger.get("decision_false_alarm_rate")
        if rate is None or not math.isfinite(rate) or rate > max_false_alarm_rate:
            shown = "an unmeasured share" if rate is None else f"{rate:.1%}" if math.isfinite(rate) else str(rate)
            reasons.append(
                f"the served decision (anomaly_score >= threshold or novelty_score >= 1) calls {shown} of the normal images "
                f"abnormal, more than {max_false_alarm_rate:.1%} (SWAN_MAX_FALSE_ALARM_RATE)"
            )
    ours, theirs = data_dates
    if champion is not None and ours is not None and theirs is not None and ours < theirs:
        reasons.append(
            f"trained on data of {ours}, older than the champion's ({theirs}): a model of older data never replaces one of "
            "newer data (a backfill or a rerun of an old date); force_promote if it must"
        )
    passed = not reasons
    promote = passed or mode in (GateMode.DISABLED, GateMode.DRY_RUN)
    return GateDecision(passed, promote, mode.value, reasons, challenger, champion, measurable=small is None)
