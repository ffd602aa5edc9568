"""Entitlement value reads: p50/p99 per type, and the cost of history (60 monthly periods, 1M events).

Runs in one process on the embedded engines: chdb (ClickHouse) for events and rollups, SQLite for state,
the real aggregator usage reader, the entitlement HTTP router over an in-process ASGI transport.
Prints JSON. Usage: python bench/entitlements.py [--events 1000000] [--reads 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aggregator.repository import ClickHouseMeterRepository
from aggregator.roller import server_now
from aggregator.service import MeterService
from aggregator.usage import ClickHouseUsageReader
from common.clickhouse import connect_clickhouse
from common.clock import FrozenClock
from common.errors import MetergateError
from common.events_table import EVENT_COLUMNS, EVENTS_TABLE
from common.http import problem_for
from common.logging import configure_logging
from common.settings import ClickHouseSettings, LogSettings
from entitlements.db.migrate import upgrade_database
from entitlements.http import router
from entitlements.service import build_entitlements
from ingest.sink.migrations import migrate_clickhouse

NS = "bench"
START = datetime(2020, 1, 1, tzinfo=UTC)
PERIODS = 60
NOW = datetime(2024, 12, 20, tzinfo=UTC)  # inside the 60th monthly period
LAST_PERIOD = datetime(2024, 12, 1, tzinfo=UTC)
PREVIOUS_PERIOD = datetime(2024, 11, 1, tzinfo=UTC)


def app_for(ents: Any) -> FastAPI:
    app = FastAPI()
    app.state.services = SimpleNamespace(entitlements=ents)

    @app.middleware("http")
    async def _ns(request: Request, call_next: Any) -> Any:
        request.state.namespace = NS
        return await call_next(request)

    @app.exception_handler(MetergateError)
    async def _problem(_request: Request, exc: MetergateError) -> Response:
        return problem_for(exc)

    app.include_router(router)
    return app


def insert_events(ch: Any, subject: str, start: datetime, end: datetime, n: int) -> None:
    """n events spread evenly over [start, end), stored now (after the meter's cutover, like the sink does)."""
    span = (end - start).total_seconds()
    stored = datetime.now(UTC)
    batch: list[list[Any]] = []
    for i in range(n):
        t = start + timedelta(seconds=span * i / n)
        batch.append([NS, f"{subject}-{i}", "bench", "tokens", subject, t, '{"v":1}', t, stored, "bench", 0, i])
        if len(batch) == 200_000:
            ch.client.insert(f"{ch.database}.{EVENTS_TABLE}", batch, column_names=list(EVENT_COLUMNS))
            batch = []
    if batch:
        ch.client.insert(f"{ch.database}.{EVENTS_TABLE}", batch, column_names=list(EVENT_COLUMNS))


class TimedReader:
    """The real usage reader, timing each port call, so the report can say where a read's time goes."""

    def __init__(self, inner: ClickHouseUsageReader) -> None:
        self.inner = inner
        self.seconds: dict[str, float] = {"usage_windows": 0.0, "stored_after": 0.0}
        self.calls: dict[str, int] = {"usage_windows": 0, "stored_after": 0}

    async def timed(self, name: str, coro: Any) -> Any:
        t = time.perf_counter()
        try:
            return await coro
        finally:
            self.seconds[name] += time.perf_counter() - t
            self.calls[name] += 1

    async def usage(self, *args: Any) -> Any:
        return await self.inner.usage(*args)

    async def usage_windows(self, *args: Any) -> Any:
        return await self.timed("usage_windows", self.inner.usage_windows(*args))

    async def usage_by_subject(self, *args: Any) -> Any:
        return await self.inner.usage_by_subject(*args)

    async def stored_after(self, *args: Any, **kwargs: Any) -> Any:
        return await self.timed("stored_after", self.inner.stored_after(*args, **kwargs))

    def take(self) -> dict[str, float]:
        """Mean milliseconds per call since the last take."""
        out = {f"{k}_ms_per_call": round(v * 1000 / max(1, self.calls[k]), 3) for k, v in self.seconds.items()}
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        self.calls = dict.fromkeys(self.calls, 0)
        return out


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 3)


async def timed_reads(client: httpx.AsyncClient, path: str, reads: int) -> dict[str, float]:
    samples = []
    for _ in range(reads):
        t = time.perf_counter()
        r = await client.get(path)
        samples.append(time.perf_counter() - t)
        r.raise_for_status()
    return {
        "p50_ms": pct(samples, 0.5),
        "p99_ms": pct(samples, 0.99),
        "mean_ms": round(statistics.mean(samples) * 1000, 3),
    }


async def main(events: int, reads: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-ent-"))
    try:
        ch = connect_clickhouse(ClickHouseSettings(path=work / "chdb", database="bench"))
        migrate_clickhouse(ch)
        meters = MeterService(ClickHouseMeterRepository(ch), cache_seconds=3600)
        await meters.start()
        await meters.create(NS, {"slug": "tokens", "aggregation": "SUM", "eventType": "tokens", "valueProperty": "$.v"})
        t = time.perf_counter()
        long_end = datetime(2024, 12, 31, tzinfo=UTC)
        insert_events(ch, "long", START, long_end, events)
        per_period = events // PERIODS
        insert_events(ch, "short", LAST_PERIOD, long_end, per_period)
        insert_events(ch, "second", PREVIOUS_PERIOD, long_end, 2 * per_period)
        load_s = time.perf_counter() - t
        # Rolled up, as the service's roller does a second or so behind ingest (reads then find no tail).
        await asyncio.to_thread(meters.repository.roller.catch_up, server_now(ch))
        await asyncio.sleep(6)  # past the snapshot visibility margin: these events are not late for any read

        url = f"sqlite:///{work / 'state.db'}"
        upgrade_database(url)
        clock = FrozenClock(START)
        reader = TimedReader(ClickHouseUsageReader(meters))
        ents = build_entitlements(url, meters=meters, usage=reader, clock=clock)
        transport = httpx.ASGITransport(app=app_for(ents))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as c:

            async def post(path: str, body: dict[str, Any]) -> None:
                r = await c.post(path, json=body)
                r.raise_for_status()

            await post("/api/v1/features", {"key": "sso", "name": "SSO"})
            await post("/api/v1/features", {"key": "seats", "name": "Seats"})
            await post("/api/v1/features", {"key": "gpt", "name": "GPT", "meterSlug": "tokens"})
            await post("/api/v1/subjects/long/entitlements", {"type": "boolean", "featureKey": "sso"})
            await post(
                "/api/v1/subjects/long/entitlements", {"type": "static", "featureKey": "seats", "config": {"n": 5}}
            )
            period = {"interval": "MONTH", "anchor": START.isoformat()}
            for subject, since in (("long", START), ("short", LAST_PERIOD), ("second", PREVIOUS_PERIOD)):
                await post(
                    f"/api/v1/subjects/{subject}/entitlements",
                    {
                        "type": "metered",
                        "featureKey": "gpt",
                        "usagePeriod": period,
                        "measureUsageFrom": since.isoformat(),
                    },
                )
                await post(
                    f"/api/v1/subjects/{subject}/entitlements/gpt/grants",
                    {
                        "amount": per_period * 2,
                        "effectiveAt": since.isoformat(),
                        "expiration": {"duration": "YEAR", "count": 10},
                        "recurrence": {"interval": "MONTH", "anchor": START.isoformat()},
                    },
                )
            clock.advance_to(NOW)
            t = time.perf_counter()
            cold = await c.get("/api/v1/subjects/long/entitlements/gpt/value")
            cold_ms = (time.perf_counter() - t) * 1000
            cold.raise_for_status()
            await c.get("/api/v1/subjects/short/entitlements/gpt/value")
            await c.get("/api/v1/subjects/second/entitlements/gpt/value")  # stores its December snapshot
            result = {
                "boolean": await timed_reads(c, "/api/v1/subjects/long/entitlements/sso/value", reads),
                "static": await timed_reads(c, "/api/v1/subjects/long/entitlements/seats/value", reads),
            }
            reader.take()
            cases = (
                ("metered_first_period", "short"),
                ("metered_after_one_period", "second"),
                ("metered_after_60_periods", "long"),
            )
            for case, subject in cases:
                result[case] = await timed_reads(c, f"/api/v1/subjects/{subject}/entitlements/gpt/value", reads)
                result[case].update(reader.take())
            long_value = cold.json()
        ents.close()
        p50 = {k: v["p50_ms"] for k, v in result.items()}
        return {
            "events": events + 3 * per_period,
            "periods": PERIODS,
            "load_seconds": round(load_s, 2),
            "reads_per_case": reads,
            "value_reads": result,
            "metered_60_periods_cold_first_read_ms": round(cold_ms, 1),
            # Both reads start from a snapshot (one completed period vs 60): the history-scaling ratio.
            "ratio_60_periods_vs_one_period_p50": round(
                p50["metered_after_60_periods"] / p50["metered_after_one_period"], 3
            ),
            # Against a read in the first period, which has no snapshot and so no late-event check.
            "ratio_60_periods_vs_first_period_p50": round(
                p50["metered_after_60_periods"] / p50["metered_first_period"], 3
            ),
            "ratio_target": 1.5,
            "long_value": long_value,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--reads", type=int, default=300)
    args = parser.parse_args()
    configure_logging(LogSettings(level="WARNING"))  # logs go to stderr; stdout is the JSON only
    print(json.dumps(asyncio.run(main(args.events, args.reads)), indent=2))
