"""ClickHouseLateEventProbe: asks the events table whether a late event invalidates a balance snapshot.

The question is narrow on purpose: "was any event of this meter's type for these subjects, with time < before,
stored after `after`?". ClickHouse answers it with one filtered scan that stops at the first hit (~3 ms for
1M events of one subject here), where `max(stored_at)` over the same rows (UsageReader.last_stored_at)
costs ~40 ms and grows with history. The events table is a documented public interface (common/events_table.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

from common.clickhouse import ClickHouse
from common.events_table import EVENTS_TABLE
from common.usage import MeterCatalog, Subjects, subject_list

_SQL = (
    "SELECT 1 FROM {table} WHERE namespace = {{ns:String}} AND type = {{ty:String}} AND subject IN {{s:Array(String)}} "
    "AND time < {{before:DateTime64(3, 'UTC')}} AND stored_at > {{after:DateTime64(3, 'UTC')}} LIMIT 1"
)


class ClickHouseLateEventProbe:
    def __init__(self, clickhouse: ClickHouse, meters: MeterCatalog) -> None:
        self.ch = clickhouse
        self.meters = meters
        self._sql = _SQL.format(table=clickhouse.table(EVENTS_TABLE))

    async def stored_after(
        self, namespace: str, meter_slug: str, subject: Subjects, *, before: datetime, after: datetime
    ) -> bool:
        subjects = subject_list(subject)
        if not subjects:
            return False
        meter = await self.meters.get_meter(namespace, meter_slug)
        if meter is None:
            return True  # cannot tell: treat the snapshot as stale (a recomputation is always correct)
        params = {
            "ns": namespace,
            "ty": meter.event_type,
            "s": subjects,
            "before": before.astimezone(UTC),
            "after": after.astimezone(UTC),
        }
        rows = await self.ch.run(lambda c: c.query(self._sql, parameters=params).result_rows)
        return bool(rows)
