"""The pure balance engine of metered entitlements (no I/O, no clock, no logging; Decimal only).

Plan the windows -> the shell fetches their usage -> compute. See README.md for every semantic rule.
"""

from entitlements.engine.burn import initial_snapshot, run
from entitlements.engine.history import HistoryWindow, burndown, windowed_history
from entitlements.engine.model import (
    ISSUE_AFTER_RESET_GRANT_ID,
    EntitlementTerms,
    Grant,
    GrantUsage,
    Instant,
    Ledger,
    ManualReset,
    Result,
    Segment,
    Snapshot,
    burn_order_key,
)
from entitlements.engine.period import (
    EngineInputError,
    ExpirationUnit,
    Interval,
    Period,
    Recurrence,
    add_months,
)
from entitlements.engine.timeline import inputs_digest, period_containing, plan_windows, snapshot_is_usable

__all__ = [
    "ISSUE_AFTER_RESET_GRANT_ID",
    "EngineInputError",
    "EntitlementTerms",
    "ExpirationUnit",
    "Grant",
    "GrantUsage",
    "HistoryWindow",
    "Instant",
    "Interval",
    "Ledger",
    "ManualReset",
    "Period",
    "Recurrence",
    "Result",
    "Segment",
    "Snapshot",
    "add_months",
    "burn_order_key",
    "burndown",
    "initial_snapshot",
    "inputs_digest",
    "period_containing",
    "plan_windows",
    "run",
    "snapshot_is_usable",
    "windowed_history",
]
