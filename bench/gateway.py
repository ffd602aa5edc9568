"""Gateway-style access checks over real HTTP against `metergate dev` (prints JSON).

The server runs as `metergate dev` in its own process (pinned to core 0 when `taskset` exists), the load
generator in another (wrk pinned to core 1 when installed, else an async httpx client). Every figure sits
next to the same app's `/healthz` measured in the same run, with their ratio.

    python bench/gateway.py [--duration 8] [--events 20000] [--freshness 30]

Cases: warm boolean / static / metered value reads at 1 and 16 connections; freshness (an HTTP ingest's
204 -> the first value read that counts the event).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else argv


@contextlib.contextmanager
def dev_server(data_dir: Path) -> Iterator[str]:
    port = free_port()
    log = (data_dir.parent / "dev.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "METERGATE_LOG__LEVEL": "WARNING"}
    argv = [sys.executable, "-m", "metergate", "dev", "--port", str(port), "--data-dir", str(data_dir)]
    proc = subprocess.Popen(pinned(0, argv), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"metergate dev exited: see {log.name}")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("metergate dev did not start")
            time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def ok(r: httpx.Response, status: int = 200) -> Any:
    if r.status_code != status:
        raise SystemExit(f"{r.request.method} {r.request.url}: {r.status_code} {r.text}")
    return r.json() if r.content else None


def event(i: int, subject: str, at: datetime, tokens: int = 1) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"e-{subject}-{i}",
        "source": "bench",
        "type": "tokens",
        "subject": subject,
        "time": at.isoformat().replace("+00:00", "Z"),
        "data": {"tokens": tokens},
    }


def setup(c: httpx.Client, events: int) -> None:
    ok(c.post("/api/v1/meters", json={"slug": "tokens", "aggregation": "SUM", "eventType": "tokens",
                                      "valueProperty": "$.tokens"}), 201)  # fmt: skip
    ok(c.post("/api/v1/features", json={"key": "llm", "name": "LLM", "meterSlug": "tokens"}), 201)
    ok(c.post("/api/v1/features", json={"key": "sso", "name": "SSO"}), 201)
    ok(c.post("/api/v1/features", json={"key": "seats", "name": "Seats"}), 201)
    now = datetime.now(UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    anchor = month.isoformat().replace("+00:00", "Z")
    ent = {"type": "metered", "featureKey": "llm", "usagePeriod": {"interval": "MONTH", "anchor": anchor},
           "measureUsageFrom": anchor}  # fmt: skip
    ok(c.post("/api/v1/subjects/acme/entitlements", json=ent), 201)
    ok(c.post("/api/v1/subjects/acme/entitlements", json={"type": "boolean", "featureKey": "sso"}), 201)
    ok(c.post("/api/v1/subjects/acme/entitlements", json={"type": "static", "featureKey": "seats",
                                                          "config": {"seats": 5}}), 201)  # fmt: skip
    grant = {"amount": 10**9, "effectiveAt": anchor, "expiration": {"duration": "YEAR", "count": 1}}
    ok(c.post("/api/v1/subjects/acme/entitlements/llm/grants", json=grant), 201)
    span = max((now - month).total_seconds() - 60, 1)
    for start in range(0, events, 5000):
        batch = [
            event(i, "acme", month + timedelta(seconds=span * i / events))
            for i in range(start, min(events, start + 5000))
        ]
        r = c.post("/api/v1/events", content=orjson.dumps(batch),
                   headers={"content-type": "application/cloudevents-batch+json"})  # fmt: skip
        ok(r, 204)


_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    assert m is not None, text
    return float(m.group(1)) * _WRK_UNITS[m.group(2)]


def wrk_rate(out: str) -> tuple[float, int]:
    """(requests/s, non-2xx/3xx responses) of wrk's report."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, int(non2xx.group(1)) if non2xx else 0


def wrk(url: str, connections: int, duration: int) -> dict[str, float]:
    argv = pinned(1, ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url])
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps, non2xx = wrk_rate(out)
    lat = {p: _ms(re.search(rf"\s{p}%\s+(\S+)", out).group(1)) for p in ("50", "99")}  # type: ignore[union-attr]
    return {"rps": rps, "p50_ms": lat["50"], "p99_ms": lat["99"], "non_2xx": float(non2xx)}


async def _client_load(url: str, connections: int, duration: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + duration
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=connections)) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                t = time.perf_counter()
                r = await client.get(url)
                latencies.append((time.perf_counter() - t) * 1000)
                errors += r.status_code != 200

        await asyncio.gather(*(worker() for _ in range(connections)))
    latencies.sort()
    return {
        "rps": len(latencies) / duration,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[int(len(latencies) * 0.99)],
        "non_2xx": float(errors),
    }


def load(url: str, connections: int, duration: int) -> dict[str, float]:
    if shutil.which("wrk"):
        return wrk(url, connections, duration)
    return asyncio.run(_client_load(url, connections, duration))


def freshness(c: httpx.Client, trials: int) -> dict[str, Any]:
    """HTTP ingest 204 -> first value read whose usage counts the event (polled back to back); with the
    duration of that read (the cached entry refreshed for the new usage) and of a from-scratch read
    (`Cache-Control: no-cache`) of the same value right after, for comparison."""
    path = "/api/v1/subjects/acme/entitlements/llm/value"
    waits: list[float] = []
    refresh_reads: list[float] = []
    scratch_reads: list[float] = []
    for n in range(trials):
        before = ok(c.get(path))["usage"]
        body = orjson.dumps(event(10**7 + n, "acme", datetime.now(UTC) - timedelta(seconds=1), tokens=1))
        ok(c.post("/api/v1/events", content=body, headers={"content-type": "application/cloudevents+json"}), 204)
        t = time.perf_counter()
        while True:
            r0 = time.perf_counter()
            counted = ok(c.get(path))["usage"] > before
            if counted:
                refresh_reads.append((time.perf_counter() - r0) * 1000)
                break
            if time.perf_counter() - t > 30:
                raise SystemExit("an ingested event was not counted within 30 s")
        waits.append((time.perf_counter() - t) * 1000)
        r0 = time.perf_counter()
        ok(c.get(path, headers={"cache-control": "no-cache"}))
        scratch_reads.append((time.perf_counter() - r0) * 1000)
    return {
        **_percentiles(waits),
        "read_after_new_usage": _percentiles(refresh_reads),
        "read_from_scratch": _percentiles(scratch_reads),
    }


def _percentiles(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"p50_ms": round(statistics.median(ms), 2), "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2)}


def bulk_setup(c: httpx.Client, subjects: int, features: int) -> None:
    """Subjects b0.. with features f0 (metered, a grant, a few events) and f1.. (boolean)."""
    month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    anchor = month.isoformat().replace("+00:00", "Z")
    existing = {f["key"] for f in ok(c.get("/api/v1/features"))}
    for i in range(features):
        if f"f{i}" not in existing:
            body = {"key": f"f{i}", "name": f"F{i}", **({"meterSlug": "tokens"} if i == 0 else {})}
            ok(c.post("/api/v1/features", json=body), 201)
    events = []
    for s in range(subjects):
        subject = f"b{s}"
        have = {e["featureKey"] for e in ok(c.get(f"/api/v1/subjects/{subject}/entitlements"))}
        for i in range(features):
            if f"f{i}" in have:
                continue
            if i == 0:
                ent = {"type": "metered", "featureKey": "f0", "measureUsageFrom": anchor,
                       "usagePeriod": {"interval": "MONTH", "anchor": anchor}}  # fmt: skip
                ok(c.post(f"/api/v1/subjects/{subject}/entitlements", json=ent), 201)
                grant = {"amount": 1000, "effectiveAt": anchor, "expiration": {"duration": "YEAR", "count": 1}}
                ok(c.post(f"/api/v1/subjects/{subject}/entitlements/f0/grants", json=grant), 201)
            else:
                ok(
                    c.post(f"/api/v1/subjects/{subject}/entitlements", json={"type": "boolean", "featureKey": f"f{i}"}),
                    201,
                )
        events += [event(s * 10 + k, subject, month + timedelta(minutes=k)) for k in range(10)]
    headers = {"content-type": "application/cloudevents-batch+json"}
    ok(c.post("/api/v1/events", content=orjson.dumps(events), headers=headers), 204)


def bulk(c: httpx.Client, subjects: int, features: int) -> dict[str, Any]:
    body = {"subjects": [f"b{s}" for s in range(subjects)], "features": [f"f{i}" for i in range(features)]}
    out: dict[str, Any] = {"subjects": subjects, "features": features}
    for case, headers in (("cold", {"cache-control": "no-cache"}), ("warm", {})):
        times = []
        for _ in range(3 if case == "cold" else 10):
            t = time.perf_counter()
            r = c.post("/api/v1/entitlements/access", json=body, headers=headers)
            times.append((time.perf_counter() - t) * 1000)
            if r.status_code == 404:
                return {"skipped": "no bulk access route"}
            ok(r)
        out[f"{case}_ms_p50"] = round(statistics.median(times), 1)
        out[f"{case}_ms_max"] = round(max(times), 1)
    return out


def cache_bytes_per_entry(n: int = 2000) -> dict[str, float]:
    """tracemalloc over n metered values computed by the real entitlement service (SQLite state, a usage
    reader with a few events per window) and kept in its BalanceCache, each with what it keeps to be
    refreshed incrementally; run in this process after the server is gone."""
    import gc
    import tracemalloc
    from collections.abc import Mapping, Sequence
    from decimal import Decimal

    # This script's folder holds bench/entitlements.py, which would shadow the entitlements package.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(ROOT))

    from common.clock import FrozenClock
    from common.usage import MeterRef
    from entitlements.cache.store import BalanceCache
    from entitlements.db.migrate import upgrade_database
    from entitlements.domain import EntitlementType, Expiration, ExpirationDuration
    from entitlements.service import build_entitlements
    from entitlements.service.entitlements import EntitlementInput
    from entitlements.service.features import FeatureInput
    from entitlements.service.grants import GrantInput

    class Meters:
        async def get_meter(self, _namespace: str, slug: str) -> MeterRef | None:
            return MeterRef(slug=slug, aggregation="SUM", event_type=slug)

    class Usage:  # 7 per window: the values differ from zero, as in production
        async def usage_windows(self, _ns: str, _m: str, _s: Any, _f: Mapping[str, str], b: Sequence[Any]) -> Any:
            return [Decimal(7)] * (len(b) - 1)

        async def stored_after(self, *_args: Any, **_kwargs: Any) -> bool:
            return False

    start = datetime(2026, 1, 1, tzinfo=UTC)

    async def run(url: str) -> dict[str, float]:
        cache = BalanceCache(max_entries=n)
        clock = FrozenClock(start)
        ents = build_entitlements(url, meters=Meters(), usage=Usage(), clock=clock, cache=cache)  # type: ignore[arg-type]
        try:
            await ents.features.create("default", FeatureInput(key="llm", name="LLM", meter_slug="tokens"))
            period = {"usage_period_interval": "MONTH", "usage_period_anchor": start, "measure_usage_from": start}
            metered = EntitlementInput(type=EntitlementType.METERED, feature_key="llm", **period)  # type: ignore[arg-type]
            grant = GrantInput(
                amount=Decimal(1000), effective_at=start, expiration=Expiration(ExpirationDuration.YEAR, 1)
            )
            for i in range(n):
                await ents.entitlements.create("default", f"customer-{i:06d}", metered)
                await ents.grants.create("default", f"customer-{i:06d}", "llm", grant)
            clock.advance_to(start + timedelta(days=12))
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for i in range(n):
                await ents.values.value("default", f"customer-{i:06d}", "llm")
            gc.collect()  # cyclic garbage of the computations is not the cache's
            filled = tracemalloc.get_traced_memory()[0]
            entries, estimated = len(cache), cache.bytes
            cache.clear()  # what the cache alone held: the memory its entries free
            gc.collect()
            held = filled - tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            return {
                "entries": entries,
                "bytes_per_entry": round(held / entries),
                "estimated_per_entry": round(estimated / entries),
                "process_growth_per_value": round((filled - before) / n),
            }
        finally:
            ents.close()

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/state.db"
        upgrade_database(url)
        return asyncio.run(run(url))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--freshness", type=int, default=30)
    ap.add_argument("--bulk", default="10,100", help="feature counts for the 100-subject bulk cases ('' skips)")
    args = ap.parse_args()
    out: dict[str, Any] = {
        "tool": "wrk" if shutil.which("wrk") else "httpx",
        "duration_s": args.duration,
        "events": args.events,
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        dev_server(Path(tmp) / "data") as base,
        httpx.Client(base_url=base, timeout=60) as c,
    ):
        setup(c, args.events)
        ent = f"{base}/api/v1/subjects/acme/entitlements"
        urls = {"healthz": f"{base}/healthz", "boolean": f"{ent}/sso/value", "static": f"{ent}/seats/value",
                "metered": f"{ent}/llm/value"}  # fmt: skip
        for name in ("boolean", "static", "metered"):
            ok(c.get(urls[name]))  # warm
        for connections in (1, 16):
            row: dict[str, Any] = {}
            for name, url in urls.items():
                row[name] = load(url, connections, args.duration)
            for name in ("boolean", "static", "metered"):
                row[name]["ratio_to_healthz"] = round(row[name]["rps"] / row["healthz"]["rps"], 3)
            out[f"c{connections}"] = row
        out["freshness"] = freshness(c, args.freshness)
        if ok(c.get("/openapi.json"))["paths"].get("/api/v1/entitlements/access") and args.bulk:
            out["bulk"] = []
            for features in sorted(int(f) for f in args.bulk.split(",")):
                bulk_setup(c, 100, features)
                out["bulk"].append(bulk(c, 100, features))
    out["cache_memory"] = cache_bytes_per_entry()  # after the server is gone: nothing else runs
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
