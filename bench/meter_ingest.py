"""Insert cost against the number of meters (prints JSON), on the embedded engine.

The insert of a 10,000-event batch the way the sink writes it (one JSONCompactColumns block, its pinned
dedupe settings and a token), into two databases of one embedded engine: `bench`, where meters are added
stage by stage (0, 100, 1,000, 10,000, spread over 1,000 namespaces; meter k: namespace ns<k % 1000>, event
type t<k // 1000>, SUM of $.tokens grouped by $.model), and `bench_empty`, which never has a meter. Every
event of a `bench` batch matches exactly one meter (event i is for meter i % meters; with 0 meters a type
no meter counts); `bench_empty` gets the same shape of events. At each stage the two inserts alternate
(A B, B A, ...), so the load of a shared machine weighs on both alike, and the ratio of their medians is
the cost of the meters. Each figure is the median of `--batches` inserts (fresh ids and tokens) after
`--warmup` unmeasured ones. An insert does no meter work (the roller counts behind ingest): after each
stage's inserts the roller rolls them all up, timed, and the figures include that cost per batch and per
event (`roll_ms_per_batch`, `ratio_with_roll_p50` = (insert + its share of the roll) / meter-less insert).
The rollups are checked against the events at the end (the SUM over every meter equals the sum of the
values).

    python bench/meter_ingest.py [--meters 0,100,1000,10000] [--events 10000] [--batches 30]
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
from aggregator.roller import server_now
from common.clickhouse import ClickHouse, connect_clickhouse
from common.events_table import EVENT_COLUMNS, EVENTS_TABLE
from common.logging import configure_logging
from common.settings import ClickHouseSettings, LogSettings
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


def timed_insert(target: ClickHouse, data: bytes, token: str, settings: dict[str, Any]) -> float:
    """Insert a `block` the way the sink does (its settings, a token); the time it took, ms."""
    t = time.perf_counter()
    target.call(
        lambda c: c.raw_insert(
            target.table(EVENTS_TABLE),
            list(EVENT_COLUMNS),
            data,
            settings={**settings, "insert_deduplication_token": token},
            fmt="JSONCompactColumns",
        )
    )
    return (time.perf_counter() - t) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", default="0,100,1000,10000")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    configure_logging(LogSettings(level="WARNING"))  # logs go to stderr; stdout is the JSON only
    counts = [int(x) for x in args.meters.split(",")]
    folder = tempfile.mkdtemp(prefix="metergate-bench-ingest-")
    try:
        ch = connect_clickhouse(ClickHouseSettings(path=Path(folder), database="bench"))
        ch.command("CREATE DATABASE IF NOT EXISTS bench_empty")
        empty = ClickHouse(ch.client, "bench_empty", embedded=ch.embedded)
        repo = ClickHouseMeterRepository(ch)
        repo.migrate()
        ClickHouseMeterRepository(empty).migrate()
        settings = ch.supported(PINNED_INSERT_SETTINGS)

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
            with_meters, without = [], []
            for b in range(args.warmup + args.batches):
                data, total = block(run, args.events, count)
                data0, _ = block(run, args.events, 0)
                token = f"bench-{run}"
                run += 1
                if b % 2:
                    t1, t0 = timed_insert(ch, data, token, settings), timed_insert(empty, data0, token, settings)
                else:
                    t0, t1 = timed_insert(empty, data0, token, settings), timed_insert(ch, data, token, settings)
                if b >= args.warmup:
                    with_meters.append(t1)
                    without.append(t0)
                if count:
                    metered_total += total
            inserted = args.warmup + args.batches
            t = time.perf_counter()
            repo.roller.catch_up(server_now(ch))
            roll_s = time.perf_counter() - t
            roll_ms_per_batch = roll_s * 1000 / inserted
            results.append(
                {
                    "meters": count,
                    "create_new_meters_s": round(created_s, 1),
                    "insert_ms_p50": round(statistics.median(with_meters), 1),
                    "insert_ms_min": round(min(with_meters), 1),
                    "no_meters_ms_p50": round(statistics.median(without), 1),
                    "no_meters_ms_min": round(min(without), 1),
                    "ratio_p50": round(statistics.median(with_meters) / statistics.median(without), 2),
                    "roll_s": round(roll_s, 2),
                    "roll_ms_per_batch": round(roll_ms_per_batch, 1),
                    "roll_us_per_event": round(roll_s * 1e6 / (inserted * args.events), 2),
                    "ratio_with_roll_p50": round(
                        (statistics.median(with_meters) + roll_ms_per_batch) / statistics.median(without), 2
                    ),
                }
            )
            print(json.dumps(results[-1]), file=sys.stderr)
        rolled = ch.rows(
            f"SELECT sumMerge(value_sum) FROM {sql.qualified(ch.database, routing.ROLLUPS_TABLE)} WHERE tier = 0"
        )[0][0]
        print(
            json.dumps(
                {
                    "events_per_batch": args.events,
                    "namespaces": NAMESPACES,
                    "batches_per_figure": args.batches,
                    "results": results,
                    "ratio_p50": {str(r["meters"]): r["ratio_p50"] for r in results},
                    "rollups_equal_events": int(rolled or 0) == metered_total,
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
