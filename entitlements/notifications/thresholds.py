"""Balance-threshold rules, as pure functions: which thresholds a value crosses, and whether that is news.

Semantics (OpenMeter's, `notification/consumer/entitlementbalancethreshold.go`, in exact decimals):
- `USAGE_VALUE` t (alias `NUMBER`) is crossed when usage > t;
- `USAGE_PERCENTAGE` p (alias `PERCENT`) when usage > p% of totalAvailableGrantAmount (p may exceed 100);
- `BALANCE_VALUE` b when balance < b, and for b = 0 when balance <= 0.
Nothing is crossed while nothing is granted (totalAvailableGrantAmount 0): percentages are meaningless then.
Per evaluation the highest crossed usage threshold and the lowest crossed balance threshold are selected; an
event is due for a kind when its selection differs from the threshold of the last event of that kind for the
same rule, entitlement and usage period. So each threshold fires once per period, hovering does not spam, and
a new period (a reset) re-arms everything.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

ZERO = Decimal(0)
HUNDRED = Decimal(100)


class ThresholdType(enum.StrEnum):
    USAGE_VALUE = "USAGE_VALUE"
    USAGE_PERCENTAGE = "USAGE_PERCENTAGE"
    BALANCE_VALUE = "BALANCE_VALUE"
    NUMBER = "NUMBER"  # deprecated alias of USAGE_VALUE
    PERCENT = "PERCENT"  # deprecated alias of USAGE_PERCENTAGE

    @property
    def canonical(self) -> ThresholdType:
        return {
            ThresholdType.NUMBER: ThresholdType.USAGE_VALUE,
            ThresholdType.PERCENT: ThresholdType.USAGE_PERCENTAGE,
        }.get(self, self)

    @property
    def kind(self) -> str:
        return "balance" if self is ThresholdType.BALANCE_VALUE else "usage"


@dataclass(frozen=True, slots=True)
class Threshold:
    type: ThresholdType
    value: Decimal

    def to_api(self) -> dict[str, object]:
        return {"type": self.type.value, "value": self.value}


@dataclass(frozen=True, slots=True)
class Reading:
    """The values a threshold is compared with (an entitlement value at one instant)."""

    balance: Decimal
    usage: Decimal
    overage: Decimal
    total_available: Decimal


def absolute(threshold: Threshold, reading: Reading) -> Decimal:
    """The threshold in the value's own unit (a percentage becomes an amount of usage)."""
    if threshold.type.canonical is ThresholdType.USAGE_PERCENTAGE:
        return reading.total_available * threshold.value / HUNDRED
    return threshold.value


def crossed(threshold: Threshold, reading: Reading) -> bool:
    if reading.total_available == ZERO:
        return False
    kind = threshold.type.canonical
    if kind is ThresholdType.BALANCE_VALUE:
        return reading.balance <= threshold.value if threshold.value == ZERO else reading.balance < threshold.value
    return reading.usage > absolute(threshold, reading)


@dataclass(frozen=True, slots=True)
class Selection:
    usage: Threshold | None = None
    balance: Threshold | None = None

    def of_kind(self, kind: str) -> Threshold | None:
        return self.balance if kind == "balance" else self.usage


def select(thresholds: Sequence[Threshold], reading: Reading) -> Selection:
    """The highest crossed usage threshold and the lowest crossed balance threshold (ties: the later one)."""
    usage: Threshold | None = None
    balance: Threshold | None = None
    for t in thresholds:
        if not crossed(t, reading):
            continue
        if t.type.kind == "balance":
            if balance is None or t.value <= balance.value:
                balance = t
        elif usage is None or absolute(t, reading) >= absolute(usage, reading):
            usage = t
    return Selection(usage=usage, balance=balance)


def due(selection: Selection, last: dict[str, Threshold]) -> list[Threshold]:
    """The selected thresholds that are news: each differs from the last event of its kind in this period."""
    out = []
    for kind in ("usage", "balance"):
        chosen = selection.of_kind(kind)
        if chosen is not None and last.get(kind) != chosen:
            out.append(chosen)
    return out


def dedupe_key(rule_id: str, entitlement_id: str, period_start_ms: int, threshold: Threshold) -> str:
    """One event per (rule, entitlement, period, threshold): a second evaluator racing to send it collides."""
    return f"{rule_id}:{entitlement_id}:{period_start_ms}:{threshold.type.canonical.value}:{threshold.value}"
