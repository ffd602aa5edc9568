"""Counting at insert against rolling up behind ingest (prints JSON), on the embedded engine.

A design measurement for "ingest cost independent of the number of meters" (aggregator/README.md): the same
meters and the same 10,000-event blocks as `bench/meter_ingest.py` (SUM of $.tokens grouped by $.model,
1,000 namespaces, every event for one meter), into three databases of one engine, inserts alternating:

- `at_insert`: the current design, the routing view counting every insert as it is written;
- `behind`: the same schema without the routing view; after the inserts, the router's own query runs once
  as `INSERT INTO meter_routed SELECT ...` over every stored event (what a roll-up behind ingest would run
  per interval over an `inserted_at` range), through the same family views into the same rollup tables;
- `plain`: the events table with no meter at all.

It prints the inserts' p50s, the roll-up's time, the cost per event of each way of counting, and whether
both rollups hold the same sum.

    python bench/meter_rollup_behind.py [--meters 100] [--batches 10] [--events 10000]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from meter_ingest import NAMESPACES, block, meter_body, timed_insert

from aggregator import routing, sql
from aggregator.meter import parse_meter
from aggregator.repository import ClickHouseMeterRepository
from common.clickhouse import ClickHouse, connect_clickhouse
from common.settings import ClickHouseSettings
from ingest.sink.processor import PINNED_INSERT_SETTINGS

DATABASES = ("at_insert", "behind", "plain")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=100)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="metergate-bench-behind-")
    try:
        ch = connect_clickhouse(ClickHouseSettings(path=Path(folder), database=DATABASES[0]))
        settings = ch.supported(PINNED_INSERT_SETTINGS)
        meters = [
            parse_meter(meter_body(k), meter_id=uuid.uuid4().hex, namespace=f"ns{k % NAMESPACES}")
            for k in range(args.meters)
        ]
        dbs: dict[str, ClickHouse] = {}
        for name in DATABASES:
            ch.command(f"CREATE DATABASE IF NOT EXISTS {name}")
            db = ClickHouse(ch.client, name, embedded=ch.embedded)
            repo = ClickHouseMeterRepository(db)
            repo.migrate()
            if name != "plain":
                repo.create_many(meters)
            if name != "at_insert":
                db.command(f"DROP VIEW {sql.qualified(name, routing.ROUTER_VIEW)} SYNC")
            dbs[name] = db

        times: dict[str, list[float]] = {name: [] for name in DATABASES}
        total = 0
        for b in range(args.warmup + args.batches):
            data, tokens = block(b, args.events, args.meters)
            total += tokens
            order = DATABASES if b % 2 else tuple(reversed(DATABASES))
            for name in order:
                ms = timed_insert(dbs[name], data, f"bench-{b}", settings)
                if b >= args.warmup:
                    times[name].append(ms)
        events = (args.warmup + args.batches) * args.events
        select = routing.router_view_ddl("behind").split(" AS ", 1)[1]
        started = time.perf_counter()
        ch.command(f"INSERT INTO {sql.qualified('behind', routing.ROUTED_TABLE)} {select}")
        roll_ms = (time.perf_counter() - started) * 1000
        p50 = {name: statistics.median(v) for name, v in times.items()}
        sums = {
            name: int(
                ch.rows(f"SELECT sumMerge(value_sum) FROM {sql.qualified(name, routing.ROLLUPS_TABLE)} WHERE tier = 0")[
                    0
                ][0]
                or 0
            )
            for name in ("at_insert", "behind")
        }
        result: dict[str, Any] = {
            "meters": args.meters,
            "events_per_insert": args.events,
            "insert_ms_p50": {name: round(v, 1) for name, v in p50.items()},
            "at_insert_to_plain": round(p50["at_insert"] / p50["plain"], 2),
            "behind_to_plain": round(p50["behind"] / p50["plain"], 2),
            "roll_up_behind_ms": round(roll_ms, 1),
            "roll_up_behind_events": events,
            "us_per_event_counted_at_insert": round((p50["at_insert"] - p50["plain"]) * 1000 / args.events, 2),
            "us_per_event_rolled_up_behind": round(roll_ms * 1000 / events, 2),
            "rollups_equal": sums["at_insert"] == sums["behind"] == total,
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
