"""Key check benchmark (prints JSON): the cost of deduplicating one 10k batch as the events table grows.

For each table size, on the embedded engine: the key check as the sink runs it (the in-memory key set
rules out new keys; ClickHouse is asked about the hits) against a ClickHouse lookup of every key of the
batch (the CRC32 scan the sink did before the key set, still its path for very large candidate sets).
The batch holds 2% copies of stored events, so both find the same duplicates (checked).

    python bench/keycheck.py [--sizes 0,1000000,5000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.clickhouse import connect_clickhouse  # noqa: E402
from common.clock import FrozenClock  # noqa: E402
from common.cloudevents import CloudEvent  # noqa: E402
from common.logging import configure_logging  # noqa: E402
from common.settings import ClickHouseSettings, LogSettings  # noqa: E402
from ingest.sink.batch import OffsetRange  # noqa: E402
from ingest.sink.decode import Decoded  # noqa: E402
from ingest.sink.dedupe import Item  # noqa: E402
from ingest.sink.migrations import migrate_clickhouse  # noqa: E402
from ingest.sink.processor import BatchProcessor  # noqa: E402
from ingest.sink.rows import RangeId  # noqa: E402

NOW = datetime(2026, 11, 1, tzinfo=UTC)
BATCH = 10_000


def fill(ch: Any, start: int, count: int) -> None:
    """`count` stored events evt-<n>, spread over the last 30 days, written as the sink would."""
    ch.command(
        f"INSERT INTO {ch.table('events')} (namespace, id, source, type, subject, time, data, ingested_at, "
        "stored_at, ingest_topic, ingest_partition, ingest_offset) "
        "SELECT 'acme', concat('evt-', toString(number)), 'svc', 'llm', concat('c-', toString(number % 1000)), "
        "fromUnixTimestamp64Milli(toInt64({now:Int64}) - toInt64(number % 2592000000)), '{\"tokens\":1}', "
        "fromUnixTimestamp64Milli({now:Int64}), fromUnixTimestamp64Milli({now:Int64}), 'events', 0, number "
        "FROM numbers({start:UInt64}, {count:UInt64})",
        parameters={"now": int(NOW.timestamp() * 1000), "start": start, "count": count},
    )


def batch(stored: int, offset: int) -> tuple[RangeId, list[Item]]:
    items = []
    for i in range(BATCH):
        if stored and i % 50 == 0:  # a copy of a stored event: same key and payload
            n = (i * 7919) % stored
            at = datetime.fromtimestamp((int(NOW.timestamp() * 1000) - n % 2592000000) / 1000, UTC)
            event = CloudEvent(f"evt-{n}", "svc", "llm", f"c-{n % 1000}", at, '{"tokens":1}')
        else:
            event = CloudEvent(f"new-{offset + i}", "svc", "llm", f"c-{i % 1000}", NOW, '{"tokens":1}')
        items.append(Item(offset + i, Decoded("acme", event, NOW)))
    return RangeId("events", 1, OffsetRange(offset, offset + BATCH - 1)), items


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="0,1000000,5000000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    configure_logging(LogSettings(level="WARNING"))
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-keycheck-") as folder:
        ch = connect_clickhouse(ClickHouseSettings(path=Path(folder), database="bench"))
        migrate_clickhouse(ch)
        stored = 0
        for size in sizes:
            fill(ch, stored, size - stored)
            stored = size
            processor = BatchProcessor(ch, dedupe_window=timedelta(days=32), clock=FrozenClock(NOW))
            t0 = time.perf_counter()
            processor.keys.load()
            load_s = time.perf_counter() - t0
            key_set, scan = [], []
            for r in range(args.repeat):
                range_id, items = batch(stored, 10_000_000 + r * BATCH)
                t0 = time.perf_counter()
                found = processor.keys.stored(range_id, items).found
                key_set.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                scanned = processor.keys.lookup(range_id, items)  # the path before the key set
                scan.append(time.perf_counter() - t0)
                assert found == scanned, "the two paths disagree"
            results.append(
                {
                    "stored_events": stored,
                    "duplicates_in_batch": len(found),
                    "key_set_load_s": round(load_s, 3),
                    "key_set_ms_p50": round(statistics.median(key_set) * 1000, 1),
                    "clickhouse_scan_ms_p50": round(statistics.median(scan) * 1000, 1),
                    "scan_over_key_set": round(statistics.median(scan) / statistics.median(key_set), 1),
                }
            )
            print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"batch": BATCH, "repeat": args.repeat, "results": results}, indent=2))


if __name__ == "__main__":
    main()
