"""The promotion gate: thresholds in one place, three modes, one decision.

A challenger is promoted when its validation metrics pass the absolute thresholds and do
not regress against the current champion by more than ``max_regression``.

Example:
    >>> decide({"auroc": 0.99, "f1": 0.95}, None, GateMode.ENABLED).passed
    True
    >>> decide({"auroc": 0.70, "f1": 0.95}, None, GateMode.ENABLED).reasons
    ['auroc 0.7000 < 0.9000']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class GateMode(StrEnum):
    DISABLED = "disabled"  # promote whatever was trained
    DRY_RUN = "dry_run"  # evaluate and log, but promote anyway
    ENABLED = "enabled"  # promote only what passes


@dataclass(frozen=True)
class MinThreshold:
    minimum: float


def promotion_thresholds() -> dict[str, MinThreshold]:
    """Absolute validation thresholds (anomaly class positive)."""
    return {"auroc": MinThreshold(0.90), "f1": MinThreshold(0.80)}


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    promote: bool
    mode: str
    reasons: list[str] = field(default_factory=list)
    challenger: dict = field(default_factory=dict)
    champion: dict | None = None


def decide(
    challenger: dict,
    champion: dict | None,
    mode: GateMode | str = GateMode.ENABLED,
    *,
    thresholds: dict[str, MinThreshold] | None = None,
    max_regression: float = 0.02,
) -> GateDecision:
    """Compare challenger validation metrics with thresholds and with the champion's."""
    mode = GateMode(mode)
    thresholds = promotion_thresholds() if thresholds is None else thresholds
    reasons = []
    for name, t in thresholds.items():
        value = challenger.get(name)
        if value is None or value < t.minimum:
            reasons.append(f"{name} {value if value is None else f'{value:.4f}'} < {t.minimum:.4f}")
    if champion:
        for name in thresholds:
            c, p = challenger.get(name), champion.get(name)
            if c is not None and p is not None and c < p - max_regression:
                reasons.append(f"{name} {c:.4f} regresses against champion {p:.4f} by more than {max_regression}")
    passed = not reasons
    promote = passed or mode in (GateMode.DISABLED, GateMode.DRY_RUN)
    return GateDecision(passed, promote, mode.value, reasons, challenger, champion)
