"""Writing events straight into the events table for aggregator tests, the way the sink does: one insert
per batch with an insert_deduplication_token and dedupe through dependent views (see ingest/sink)."""

from __future__ import annotations

from typing import Any

import orjson

from aggregator import sql
from common.clickhouse import ClickHouse
from common.events_table import EVENT_COLUMNS, EVENTS_TABLE

INSERT_SETTINGS = {"deduplicate_blocks_in_dependent_materialized_views": 1}


def insert(ch: ClickHouse, namespace: str, evs: list[dict[str, Any]], token: str) -> None:
    rows = []
    for e in evs:
        data = orjson.dumps(e["data"], option=orjson.OPT_SORT_KEYS).decode() if "data" in e else "null"
        values = {
            "namespace": namespace,
            "id": e["id"],
            "source": "src",
            "type": e["type"],
            "subject": e["subject"],
            "time": e["time"],
            "data": data,
            "ingested_at": e["time"],
            "stored_at": e["time"],
            "ingest_topic": "t",
            "ingest_partition": 0,
            "ingest_offset": 0,
        }
        rows.append([values[c] for c in EVENT_COLUMNS])
    ch.call(
        lambda c: c.insert(
            sql.qualified(ch.database, EVENTS_TABLE),
            rows,
            column_names=list(EVENT_COLUMNS),
            settings={**INSERT_SETTINGS, "insert_deduplication_token": token},
        )
    )
