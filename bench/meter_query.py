"""Meter query benchmark (prints JSON): 10M events, 1,000 subjects, 30 days, on the embedded engine.

In one run: SUM per subject per hour over the 30 days from the minute rollup vs from raw events (the
same answer is checked), and one subject's monthly total p50/p99 (minute-aligned and off-minute bounds),
each read through `MeterService.run` as the API makes it (the roller's marks and whether anything was stored
since its mark, one query; the rollups, plus the raw tail when there is one; the marks again).
Events are generated straight into the events table with INSERT ... SELECT FROM numbers(); the meter is
created afterwards, so the run also measures what meter creation answers in (`create_meter_answer_s`, the
part POST /api/v1/meters waits for) and the backfill that runs behind it.

    python bench/meter_query.py [--events 10000000] [--subjects 1000] [--days 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregator import routing, sql
from aggregator.meter import WindowSize, parse_meter
from aggregator.repository import ClickHouseMeterRepository
from aggregator.service import MeterService
from common.clickhouse import connect_clickhouse
from common.events_table import EVENT_COLUMNS, EVENTS_TABLE
from common.logging import configure_logging
from common.settings import ClickHouseSettings, LogSettings

START = datetime(2024, 1, 1, tzinfo=UTC)


def generate(ch: Any, events: int, subjects: int, days: int) -> float:
    span_ms = days * 86_400_000
    exprs = {
        "namespace": "'bench'",
        "id": "toString(number)",
        "source": "'bench'",
        "type": "'prompt'",
        "subject": f"concat('subject-', toString(number % {subjects}))",
        "time": (
            "toDateTime64('2024-01-01 00:00:00', 3, 'UTC') + "
            f"toIntervalMillisecond(intDiv(number * {span_ms}, {events}))"
        ),
        "data": "concat('{\"model\":\"m', toString(number % 3), '\",\"tokens\":', toString(number % 997), '}')",
        "ingested_at": "toDateTime64('2024-01-01 00:00:00', 3, 'UTC')",
        "stored_at": "toDateTime64('2024-01-01 00:00:00', 3, 'UTC')",
        "ingest_topic": "'bench'",
        "ingest_partition": "0",
        "ingest_offset": "toInt64(number)",
    }
    cols = [c for c in EVENT_COLUMNS if c in exprs]
    started = time.perf_counter()
    ch.command(
        f"INSERT INTO {sql.qualified(ch.database, EVENTS_TABLE)} ({', '.join(cols)}) "
        f"SELECT {', '.join(exprs[c] for c in cols)} FROM numbers({events})",
        settings={"max_insert_block_size": 1_000_000},
    )
    return time.perf_counter() - started


def timed(ch: Any, text: str, params: dict[str, Any], runs: int) -> tuple[list[float], Any]:
    times, rows = [], None
    for _ in range(runs):
        t = time.perf_counter()
        rows = ch.rows(text, parameters=params)
        times.append((time.perf_counter() - t) * 1000)
    return times, rows


async def point_reads(service: MeterService, queries: list[sql.Query]) -> list[float]:
    """Each query as the API reads it (`MeterService.run`: the roller's marks and whether anything was stored
    since, the rollups plus the raw tail when there is one, the marks again), ms each."""
    await service._refresh()
    out = []
    for q in queries:
        t = time.perf_counter()
        await service.run(q)
        out.append((time.perf_counter() - t) * 1000)
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--subjects", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--point-queries", type=int, default=300)
    args = ap.parse_args()
    configure_logging(LogSettings(level="WARNING"))  # logs go to stderr; stdout is the JSON only
    folder = Path(tempfile.mkdtemp(prefix="bench-meter-"))
    try:
        ch = connect_clickhouse(ClickHouseSettings(path=folder, database="bench"))
        repo = ClickHouseMeterRepository(ch)
        repo.migrate()
        gen_s = generate(ch, args.events, args.subjects, args.days)
        meter = parse_meter(
            {
                "slug": "tokens",
                "aggregation": "SUM",
                "eventType": "prompt",
                "valueProperty": "$.tokens",
                "groupBy": {"model": "$.model"},
            },
            meter_id="bench",
            namespace="bench",
        )
        t = time.perf_counter()
        cutover = repo.begin(meter)  # what POST /api/v1/meters waits for
        begin_s = time.perf_counter() - t
        t = time.perf_counter()
        repo.complete(meter, cutover)  # the background backfill
        backfill_s = time.perf_counter() - t
        rollup_rows = {
            t.column: int(ch.rows(f"SELECT count() FROM {sql.qualified(ch.database, sql.tier_table(meter, t))}")[0][0])
            for t in sql.TIERS
        }
        parts = {
            str(name): int(n)
            for name, n in ch.rows(
                "SELECT table, count() FROM system.parts WHERE active AND database = {db:String} "
                "AND table IN {t:Array(String)} GROUP BY table",
                parameters={"db": ch.database, "t": [EVENTS_TABLE, routing.ROLLUPS_TABLE]},
            )
        }
        end = START + timedelta(days=args.days)

        hourly = sql.Query(
            meter=meter, namespace="bench", start=START, end=end, window=WindowSize.HOUR, group_subject=True
        )
        rollup_text, rollup_params = sql.build_query(ch.database, hourly, stored_from=repo.roller.marks().done)
        raw_text, raw_params = sql.raw_query(ch.database, hourly)
        # End to end: every result row (1,000 subjects x 720 hours) decoded into Python with Decimals.
        rollup_ms, rollup_rows_out = timed(ch, rollup_text, rollup_params, runs=args.runs)
        raw_ms, raw_rows_out = timed(ch, raw_text, raw_params, runs=args.runs)
        same = [tuple(r) for r in rollup_rows_out] == [tuple(r) for r in raw_rows_out]
        # In the engine: the same query computed in full, only a digest of its rows sent back.
        digest = "SELECT count(), sum(toInt64(bucket)) FROM ({})"
        rollup_engine_ms, _ = timed(ch, digest.format(rollup_text), rollup_params, runs=args.runs)
        raw_engine_ms, _ = timed(ch, digest.format(raw_text), raw_params, runs=args.runs)

        # The service's planner: the hour table only when it saves enough rows for one subject.
        hour_tier = sql.hour_tier_pays(repo.tier_stats(meter), 1)
        rng = random.Random(7)
        aligned_q, unaligned_q = [], []
        for _ in range(args.point_queries):
            subject = f"subject-{rng.randrange(args.subjects)}"
            aligned_q.append(
                sql.Query(
                    meter=meter, namespace="bench", start=START, end=end, subjects=(subject,), hour_tier=hour_tier
                )
            )
            off = timedelta(milliseconds=rng.randrange(1, 59_999))
            unaligned_q.append(
                sql.Query(
                    meter=meter,
                    namespace="bench",
                    start=START + off,
                    end=end - off,
                    subjects=(subject,),
                    hour_tier=hour_tier,
                )
            )
        service = MeterService(repo, cache_seconds=3600)
        aligned = asyncio.run(point_reads(service, aligned_q))
        unaligned = asyncio.run(point_reads(service, unaligned_q))

        rollup_med, raw_med = statistics.median(rollup_ms), statistics.median(raw_ms)
        rollup_eng, raw_eng = statistics.median(rollup_engine_ms), statistics.median(raw_engine_ms)
        print(
            json.dumps(
                {
                    "engine": "chdb " + str(ch.rows("SELECT version()")[0][0]),
                    "events": args.events,
                    "subjects": args.subjects,
                    "days": args.days,
                    "generate_s": round(gen_s, 2),
                    "create_meter_answer_s": round(begin_s, 3),
                    "background_backfill_s": round(backfill_s, 2),
                    "rollup_rows": rollup_rows,
                    "active_parts_after_create": parts,
                    "sum_per_subject_per_hour": {
                        "result_rows": len(rollup_rows_out or []),
                        "same_answer": same,
                        "engine_rollup_ms_median": round(rollup_eng, 1),
                        "engine_raw_ms_median": round(raw_eng, 1),
                        "engine_speedup": round(raw_eng / rollup_eng, 1),
                        "end_to_end_rollup_ms_median": round(rollup_med, 1),
                        "end_to_end_raw_ms_median": round(raw_med, 1),
                        "end_to_end_speedup": round(raw_med / rollup_med, 1),
                        "target": "speedup >= 10",
                    },
                    "one_subject_monthly_total": {
                        "queries": args.point_queries,
                        "hour_tier_used": hour_tier,
                        "minute_aligned_ms": {"p50": pct(aligned, 0.5), "p99": pct(aligned, 0.99)},
                        "off_minute_bounds_ms": {"p50": pct(unaligned, 0.5), "p99": pct(unaligned, 0.99)},
                        "target": "p99 <= 20 ms",
                    },
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
