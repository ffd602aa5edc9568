"""Insert cost against the number of meters (prints JSON), on the embedded engine.

One run, one database: the insert of a 10,000-event batch the way the sink writes it (one JSONCompactColumns
block, its pinned dedupe settings and a token), timed with 0 meters, then again after meters were added up
to 100, 1,000 and 10,000, spread over 1,000 namespaces (meter k: namespace ns<k % 1000>, event type
t<k // 1000>, SUM of $.tokens grouped by $.model). Every event of a batch matches exactly one meter (event i
is for meter i % meters); with 0 meters the same namespaces and a type no meter counts. Each figure is the
median of `--batches` inserts (fresh ids and tokens) after `--warmup` unmeasured ones. The rollups are
checked against the events at the end (the SUM over every meter equals the sum of the values).

    python bench/meter_ingest.py [--meters 0,100,1000,10000] [--events 10000] [--batches 15]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregator import routing, sql
from aggregator.meter import parse_meter
from aggregator.repository import ClickHouseMeterRepository
from common.clickhouse import connect_clickhouse
from common.events_table import EVENT_COLUMNS, EVENTS_TABLE
from common.settings import ClickHouseSettings
from ingest.sink.processor import PINNED_INSERT_SETTINGS

NAMESPACES = 1000
BASE_SECONDS = 1_735_689_600  # 2025-01-01T00:00:00Z


def meter_body(k: int) -> dict[str, Any]:
    return {
        "slug": f"m{k}",
        "aggregation": "SUM",
        "eventType": f"t{k // NAMESPACES}",
        "valueProperty": "$.tokens",
        "groupBy": {"model": "$.model"},
    }


def block(run: int, events: int, meters: int) -> tuple[bytes, int]:
    """A sink-like block of `events` events, each for one meter (or for none when meters == 0)."""
    cols: dict[str, list[Any]] = {c: [] for c in EVENT_COLUMNS}
    total = 0
    for i in range(events):
        k = i % meters if meters else i
        tokens = (i * 7919) % 1000
        total += tokens
        cols["namespace"].append(f"ns{k % NAMESPACES}")
        cols["id"].append(f"{run}-{i}")
        cols["source"].append("bench")
        cols["type"].append(f"t{k // NAMESPACES}" if meters else "unmetered")
        cols["subject"].append(f"customer-{i % 200}")
        cols["time"].append(BASE_SECONDS + run * 60 + i % 3600)
        cols["data"].append(orjson.dumps({"model": f"m{i % 3}", "tokens": tokens}).decode())
        cols["ingested_at"].append(BASE_SECONDS)
        cols["stored_at"].append(BASE_SECONDS)
        cols["ingest_topic"].append("bench")
        cols["ingest_partition"].append(0)
        cols["ingest_offset"].append(run * events + i)
    return orjson.dumps([cols[c] for c in EVENT_COLUMNS]), total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", default="0,100,1000,10000")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    counts = [int(x) for x in args.meters.split(",")]
    folder = tempfile.mkdtemp(prefix="metergate-bench-ingest-")
    try:
        ch = connect_clickhouse(ClickHouseSettings(path=Path(folder), database="bench"))
        repo = ClickHouseMeterRepository(ch)
        repo.migrate()
        settings = ch.supported(PINNED_INSERT_SETTINGS)
        table = ch.table(EVENTS_TABLE)
        results: list[dict[str, Any]] = []
        meters: list[Any] = []
        metered_total = 0
        run = 0
        for count in counts:
            started = time.perf_counter()
            new = [
                parse_meter(meter_body(k), meter_id=uuid.uuid4().hex, namespace=f"ns{k % NAMESPACES}")
                for k in range(len(meters), count)
            ]
            repo.create_many(new)
            meters.extend(new)
            created_s = time.perf_counter() - started
            times = []
            for b in range(args.warmup + args.batches):
                data, total = block(run, args.events, count)
                token = f"bench-{run}"
                run += 1
                t = time.perf_counter()
                ch.call(
                    lambda c, data=data, token=token: c.raw_insert(
                        table,
                        list(EVENT_COLUMNS),
                        data,
                        settings={**settings, "insert_deduplication_token": token},
                        fmt="JSONCompactColumns",
                    )
                )
                if b >= args.warmup:
                    times.append((time.perf_counter() - t) * 1000)
                if count:
                    metered_total += total
            results.append(
                {
                    "meters": count,
                    "create_new_meters_s": round(created_s, 1),
                    "insert_ms_p50": round(statistics.median(times), 1),
                    "insert_ms_min": round(min(times), 1),
                    "insert_ms_max": round(max(times), 1),
                }
            )
            print(json.dumps(results[-1]), file=sys.stderr)
        rolled = ch.rows(
            f"SELECT sumMerge(value_sum) FROM {sql.qualified(ch.database, routing.ROLLUPS_TABLE)} WHERE tier = 0"
        )[0][0]
        base = results[0]["insert_ms_p50"]
        print(
            json.dumps(
                {
                    "events_per_batch": args.events,
                    "namespaces": NAMESPACES,
                    "batches_per_figure": args.batches,
                    "results": results,
                    "ratio_to_first": {str(r["meters"]): round(r["insert_ms_p50"] / base, 2) for r in results},
                    "rollups_equal_events": int(rolled or 0) == metered_total,
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
