"""Reading stored events back for GET /api/v1/events (a debugging view, newest first).

`list_events_query` is pure (filters in, SQL and parameters out); `ClickHouseEventsReader` runs it.
Every query is scoped to one namespace: a caller can never read another tenant's events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clickhouse_connect.driver.exceptions import DatabaseError

from common.clickhouse import ClickHouse
from common.clock import utc_from_storage
from common.cloudevents import CloudEvent
from common.errors import Unavailable
from common.events_table import EVENTS_TABLE

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to list; the time window is half-open [start, end) on the event time."""

    start: datetime | None = None
    end: datetime | None = None
    subject: str | None = None
    type: str | None = None
    id: str | None = None
    ingested_from: datetime | None = None
    ingested_to: datetime | None = None
    limit: int = DEFAULT_LIMIT


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event: CloudEvent
    ingested_at: datetime
    stored_at: datetime


def list_events_query(table: str, namespace: str, f: EventFilter) -> tuple[str, dict[str, Any]]:
    """SQL and server-side parameters listing a namespace's events, newest first."""
    where = ["namespace = {namespace:String}"]
    params: dict[str, Any] = {"namespace": namespace, "limit": max(1, min(f.limit, MAX_LIMIT))}
    if f.start is not None:
        where.append("time >= {start:DateTime64(3, 'UTC')}")
        params["start"] = f.start
    if f.end is not None:
        where.append("time < {end:DateTime64(3, 'UTC')}")
        params["end"] = f.end
    if f.subject is not None:
        where.append("subject = {subject:String}")
        params["subject"] = f.subject
    if f.type is not None:
        where.append("type = {type:String}")
        params["type"] = f.type
    if f.id is not None:
        where.append("id = {id:String}")
        params["id"] = f.id
    if f.ingested_from is not None:
        where.append("ingested_at >= {ingested_from:DateTime64(3, 'UTC')}")
        params["ingested_from"] = f.ingested_from
    if f.ingested_to is not None:
        where.append("ingested_at < {ingested_to:DateTime64(3, 'UTC')}")
        params["ingested_to"] = f.ingested_to
    sql = (
        "SELECT id, source, type, subject, time, data, ingested_at, stored_at "
        f"FROM {table} WHERE {' AND '.join(where)} "
        "ORDER BY time DESC, ingested_at DESC, source, id LIMIT {limit:UInt32}"
    )
    return sql, params


def stored_event_from_row(row: Sequence[Any]) -> StoredEvent:
    event_id, source, event_type, subject, time, data, ingested_at, stored_at = row
    return StoredEvent(
        event=CloudEvent(
            id=event_id, source=source, type=event_type, subject=subject, time=utc_from_storage(time), data=data
        ),
        ingested_at=utc_from_storage(ingested_at),
        stored_at=utc_from_storage(stored_at),
    )


class ClickHouseEventsReader:
    def __init__(self, clickhouse: ClickHouse) -> None:
        self._ch = clickhouse

    async def list_events(self, namespace: str, f: EventFilter) -> list[StoredEvent]:
        sql, params = list_events_query(self._ch.table(EVENTS_TABLE), namespace, f)
        try:
            rows = await self._ch.run(lambda c: c.query(sql, parameters=params).result_rows)
        except DatabaseError as exc:
            if "UNKNOWN_TABLE" in str(exc) or "UNKNOWN_DATABASE" in str(exc):
                raise Unavailable("the events table does not exist yet: run `metergate migrate`") from exc
            raise
        return [stored_event_from_row(row) for row in rows]
