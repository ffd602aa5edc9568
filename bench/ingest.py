"""Ingest benchmark (prints JSON): in one run, on the same generated events,

1. raw baseline: aiokafka consume -> ClickHouse insert of the raw values, commit; no logic at all;
2. the sink worker: decoding and validation of both CloudEvents bindings, in-batch and stored-key
   dedupe, ledger record, tokenised insert, commit;
3. HTTP ingest: POST /api/v1/events in batches of 100 through `metergate dev` (embedded path) on
   uvicorn, in a subprocess with its own chdb folder; twice "before" and twice "after" (this checkout),
   alternating. "Before" is the code of a git revision (`--http-before REV`: `git archive` of it, run from
   a temporary folder with the same interpreter), or by default this checkout with the body handling
   before the compiled schema (tests/support/legacy_decoder.py). The load comes from wrk when installed
   (`--http-driver`: a Lua script posting batches of unique events, 32 connections, one thread in C), else
   from an httpx client in this process, which on 2 cores limits the figure itself (35k/s where wrk shows
   the same server taking 55-60k/s);
4. the sink's event-loop ceiling: aiokafka consume alone, and consume + decode/validate on the same thread
   with no writes at all (what one Python worker could reach if writing cost nothing);
5. when the compiled decoder (common/_cevents.c) is built, 2 and 4 again on its Python reference
   (`python_decoder`): the extension's gain, side by side in one run.

Rates are events/s measured from the first message fetched to the last batch committed (the group
join is excluded). `targets` repeats the ratios the sink issue set (sink / raw, consume + decode /
consume only, HTTP after / before). Kafka is tansu on loopback unless KAFKA_BOOTSTRAP_SERVERS is set.

    python bench/ingest.py [--events 300000] [--http-events 50000] [--http-before REV] [--workers N]

`--workers N` (N > 1, at most the topic's 4 partitions) adds the scale-out figure: on the same topic, one
sink worker process (`python -m ingest.sink`) and then N in one consumer group, each timed from the group's
first committed offset to the last. With METERGATE_CLICKHOUSE__URL the workers share that server (the
production shape); without it each worker has its own embedded engine (chdb allows one process per folder),
which measures the workers' side of the scale-out only. Kafka is tansu unless KAFKA_BOOTSTRAP_SERVERS is set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer  # noqa: E402

from common import cloudevents  # noqa: E402
from common.clickhouse import connect_clickhouse  # noqa: E402
from common.cloudevents import NATIVE  # noqa: E402
from common.logging import configure_logging  # noqa: E402
from common.settings import ClickHouseSettings, KafkaSettings, LogSettings  # noqa: E402
from ingest.settings import SinkSettings  # noqa: E402
from ingest.sink.tuning import tuned_interpreter  # noqa: E402
from ingest.sink.worker import open_worker  # noqa: E402
from tests.support.services import free_port, kafka_bootstrap  # noqa: E402
from tests.support.sink_kafka import committed_offsets, make_topics, produce  # noqa: E402
from tests.support.sink_stream import Message, build_stream  # noqa: E402

PARTITIONS = 4


def fresh_consumer(bootstrap: str, topic: str, group_prefix: str) -> AIOKafkaConsumer:
    """A consumer in a new group, reading the topic from the start (the sink's fetch size)."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{group_prefix}-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=2000,
        heartbeat_interval_ms=600,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )


async def raw_baseline(bootstrap: str, topic: str, ch_settings: ClickHouseSettings, total: int, batch: int) -> float:
    ch = connect_clickhouse(ch_settings)
    table = ch.table("raw_events")
    ch.command(f"CREATE TABLE IF NOT EXISTS {table} (value String) ENGINE = MergeTree ORDER BY tuple()")
    consumer = fresh_consumer(bootstrap, topic, "raw")
    await consumer.start()
    try:
        done = 0
        started: float | None = None
        with tuned_interpreter():  # the same collector and GIL settings as the sink: no head start either way
            while done < total:
                fetched = await consumer.getmany(timeout_ms=200, max_records=batch)
                if not fetched:
                    continue
                started = started or time.perf_counter()
                rows = [(r.value or b"",) for records in fetched.values() for r in records]
                await asyncio.to_thread(
                    lambda rows=rows: ch.call(lambda c: c.insert(table, rows, column_names=["value"]))  # type: ignore[misc]
                )
                await consumer.commit()
                done += len(rows)
        assert started is not None
        return total / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def consume_and_decode(bootstrap: str, topic: str, total: int, batch: int) -> tuple[float, float]:
    """The ceiling of the sink's event loop: aiokafka consume alone, then consume + decode and validate
    (the sink's batch_from_records) on the same thread, no writes at all. Events/s for each."""
    from ingest.sink.batch import OffsetRange
    from ingest.sink.consumer import batch_from_records

    rates = []
    for decode in (False, True):
        consumer = fresh_consumer(bootstrap, topic, "ceiling")
        await consumer.start()
        try:
            done = 0
            started: float | None = None
            with tuned_interpreter():  # the collector and GIL settings the sink's loop runs with
                while done < total:
                    fetched = await consumer.getmany(timeout_ms=200, max_records=batch)
                    if not fetched:
                        continue
                    started = started or time.perf_counter()
                    for tp, records in fetched.items():
                        done += len(records)
                        if decode:
                            offsets = OffsetRange(records[0].offset, records[-1].offset)
                            batch_from_records(tp.topic, tp.partition, offsets, records, "default")
            assert started is not None
            rates.append(total / (time.perf_counter() - started))
        finally:
            await consumer.stop()
    return rates[0], rates[1]


async def sink_worker(
    kafka: KafkaSettings, ch_settings: ClickHouseSettings, total: int, batch: int
) -> tuple[float, dict[str, Any]]:
    sink = SinkSettings(consumer_group=f"sink-{uuid.uuid4().hex[:8]}", session_timeout_ms=2000, batch_size=batch)
    stop = asyncio.Event()
    async with open_worker(ch_settings, kafka, sink) as worker:
        task = asyncio.create_task(worker.run(stop))
        started: float | None = None
        while True:
            c = worker.counters
            processed = c.stored + c.duplicates + c.conflicts + c.malformed
            if started is None and (processed or any(s.buffer for s in worker.partitions.values())):
                started = time.perf_counter()
            if processed >= total:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        assert started is not None
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        counters = {"stored": c.stored, "duplicates": c.duplicates, "batches": c.batches}
    return total / elapsed, counters


# `metergate dev` with the POST route's body handling as it was before the compiled schema (the "before" of
# the HTTP comparison): the same process, the same publisher, only the decoder differs.
LEGACY_DEV = """
import sys
sys.path.insert(0, sys.argv.pop(1))
import ingest.http
from tests.support.legacy_decoder import legacy_events_from_body
ingest.http.events_from_body = legacy_events_from_body
from metergate.cli import main
sys.exit(main())
"""


# wrk's script: each request a new batch of unique events (ids from the request counter), as the httpx driver
# sends them. Lua builds a 100-event body in ~0.1 ms: the load generator is never what limits the rate.
WRK_SCRIPT = """
local counter = 0
local batch = tonumber(os.getenv("BENCH_BATCH"))
local prefix = os.getenv("BENCH_PREFIX")
local headers = {["Content-Type"] = "application/cloudevents-batch+json"}
request = function()
  counter = counter + 1
  local parts = {}
  for i = 0, batch - 1 do
    parts[i + 1] = string.format(
      '{"specversion":"1.0","id":"%s-%d-%d","source":"bench","type":"llm.tokens","subject":"customer-%d",' ..
      '"time":"2026-03-01T12:00:00.123Z","data":{"tokens":%d,"model":"m"}}',
      prefix, counter, i, (counter * batch + i) % 1000, i)
  end
  return wrk.format("POST", "/api/v1/events", headers, "[" .. table.concat(parts, ",") .. "]")
end
"""


def _wrk_ingest(base: str, batch: int, concurrency: int, seconds: int) -> dict[str, Any]:
    """POST batches with wrk (one thread, C) for `seconds`: events/s = requests/s x batch."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    try:
        env = {**os.environ, "BENCH_BATCH": str(batch), "BENCH_PREFIX": f"wrk-{uuid.uuid4().hex[:8]}"}
        argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", script.name, f"{base}/api/v1/events"]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout
    finally:
        os.unlink(script.name)
    from bench.gateway import wrk_rate

    rps, non2xx = wrk_rate(out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "events_per_s": round(rps * batch),
        "batch": batch,
        "concurrency": concurrency,
        "seconds": seconds,
        "driver": "wrk",
        "failed_requests": non2xx,
        **({"socket_errors": errors.group(1)} if errors else {}),
    }


def http_driver(choice: str) -> str:
    """wrk when installed (a C load generator: the server, not the client, sets the rate on 2 cores), else
    httpx (a Python client in this process, which on a small machine can be what limits the figure)."""
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "httpx"
    if choice == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--http-driver wrk: wrk is not installed (apt-get install wrk)")
    return choice


def http_ingest(
    events: int,
    batch: int = 100,
    concurrency: int = 32,
    *,
    legacy: bool = False,
    code: Path = ROOT,
    driver: str = "httpx",
) -> dict[str, Any]:
    """`metergate dev` in a subprocess (embedded path), driven by N connections of an httpx client (`events`
    in all) or of wrk (for events / 10,000 seconds, at least 3); `legacy`: with the body handling before the
    compiled schema; `code`: the source tree it runs from."""
    import httpx

    if not (code / "metergate" / "app.py").exists():
        return {"skipped": "metergate/app.py not present"}
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-dev-") as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("METERGATE_")}
        env["METERGATE_LOG__LEVEL"] = "WARNING"
        env["PYTHONPATH"] = str(code)  # its packages before the installed (editable) ones
        command = ["-c", LEGACY_DEV, str(code)] if legacy else ["-m", "metergate"]
        proc = subprocess.Popen(
            [sys.executable, *command, "dev", "--data-dir", data_dir, "--port", str(port)],
            cwd=code,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/api/v1/events?limit=1", timeout=1).status_code < 500:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    return {"error": "metergate dev did not start"}
                time.sleep(0.2)
            if driver == "wrk":
                return _wrk_ingest(base, batch, concurrency, max(3, round(events / 10_000)))
            bodies = [
                orjson.dumps(
                    [
                        {
                            "specversion": "1.0",
                            "id": f"http-{b}-{i}",
                            "source": "bench",
                            "type": "llm.tokens",
                            "subject": f"customer-{(b * batch + i) % 1000}",
                            "time": "2026-03-01T12:00:00.123Z",
                            "data": {"tokens": i, "model": "m"},
                        }
                        for i in range(batch)
                    ]
                )
                for b in range(events // batch)
            ]

            async def drive() -> tuple[float, int]:
                limits = httpx.Limits(max_connections=concurrency)
                async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
                    queue = list(reversed(bodies))
                    failures = 0

                    async def one() -> None:
                        nonlocal failures
                        while queue:
                            body = queue.pop()
                            r = await client.post(
                                "/api/v1/events",
                                content=body,
                                headers={"content-type": "application/cloudevents-batch+json"},
                            )
                            failures += r.status_code != 204

                    t0 = time.perf_counter()
                    await asyncio.gather(*(one() for _ in range(concurrency)))
                    return time.perf_counter() - t0, failures

            elapsed, failures = asyncio.run(drive())
            return {
                "events_per_s": round(len(bodies) * batch / elapsed),
                "batch": batch,
                "concurrency": concurrency,
                "driver": "httpx",
                "events": len(bodies) * batch,
                "failed_requests": failures,
            }
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            if proc.poll() is None:
                proc.kill()


async def topic_with(bootstrap: str, prefix: str, messages: list[Message]) -> KafkaSettings:
    """A new events topic (and dead-letter topic) of PARTITIONS partitions holding these messages."""
    kafka = KafkaSettings(
        bootstrap_servers=bootstrap,
        events_topic=f"{prefix}-{uuid.uuid4().hex[:8]}",
        dead_letter_topic=f"{prefix}-dlq-{uuid.uuid4().hex[:8]}",
        topic_partitions=PARTITIONS,
    )
    await make_topics(kafka)
    await produce(bootstrap, kafka.events_topic, messages)
    return kafka


async def decoder_side(
    bootstrap: str,
    kafka: KafkaSettings,
    ch_settings: ClickHouseSettings,
    total: int,
    batch: int,
    unique: int,
    raw: float,
) -> dict[str, Any]:
    """The sink worker and the event loop's ceiling on the decoder in use: events/s and the issue's ratios."""
    sink, counters = await sink_worker(kafka, ch_settings, total, batch)
    assert counters["stored"] == unique, counters
    consume_only, consume_decode = await consume_and_decode(bootstrap, kafka.events_topic, total, batch)
    return {
        "sink_events_per_s": round(sink),
        "sink_to_raw_ratio": round(sink / raw, 3),
        "sink_batches": counters["batches"],
        # the event loop's ceiling: aiokafka alone, and aiokafka + decode/validate with no writes at all
        "consume_only_events_per_s": round(consume_only),
        "consume_and_decode_events_per_s": round(consume_decode),
        "consume_and_decode_to_consume_only_ratio": round(consume_decode / consume_only, 3),
        "sink_to_consume_and_decode_ratio": round(sink / consume_decode, 3),
    }


async def kafka_part(events: int, batch: int) -> dict[str, Any]:
    stream = build_stream(events, duplicate_rate=0.02, conflict_rate=0.0, malformed_rate=0.0)
    total, unique = len(stream.messages), len(stream.expected)
    gc.collect()
    gc.freeze()  # the generated data is not the system under test: keep it out of the collector's scans
    with kafka_bootstrap() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-chdb-") as folder:
        kafka = await topic_with(bootstrap, "bench", stream.messages)
        ch_settings = ClickHouseSettings(path=Path(folder), database="bench")
        raw = await raw_baseline(bootstrap, kafka.events_topic, ch_settings, total, batch)
        python: dict[str, Any] = {"skipped": "the C extension is not built"}
        if NATIVE:  # the same topic through the Python reference of the compiled decoder, side by side
            with python_decoder():  # a database of its own: the sink below must not find these events stored
                py_settings = ClickHouseSettings(path=Path(folder), database="bench_python")
                python = await decoder_side(bootstrap, kafka, py_settings, total, batch, unique, raw)
        compiled = await decoder_side(bootstrap, kafka, ch_settings, total, batch, unique, raw)
        if NATIVE:
            python["compiled_to_python_sink"] = round(compiled["sink_events_per_s"] / python["sink_events_per_s"], 3)
            python["compiled_to_python_consume_and_decode"] = round(
                compiled["consume_and_decode_events_per_s"] / python["consume_and_decode_events_per_s"], 3
            )
    return {
        "messages": total,
        "unique_events": unique,
        "raw_baseline_events_per_s": round(raw),
        **compiled,
        # the same with the compiled decoder's Python reference (common/_cevents.c not used)
        "python_decoder": python,
    }


@contextlib.contextmanager
def python_decoder() -> Iterator[None]:
    """The sink on the Python reference of common/_cevents.c (decoding and the prepare pass) in the block."""
    import ingest.sink.decode as decode
    import ingest.sink.prepare as prepare

    saved = decode.NATIVE, decode.event_from_document, prepare.NATIVE
    decode.NATIVE, decode.event_from_document, prepare.NATIVE = False, cloudevents._event_from_document, False
    try:
        yield
    finally:
        decode.NATIVE, decode.event_from_document, prepare.NATIVE = saved


@contextlib.contextmanager
def source_tree(revision: str | None) -> Iterator[Path | None]:
    """The source tree of a git revision in a temporary folder (`git archive`), or None for the legacy decoder."""
    if revision is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="bench-before-") as folder:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
        yield Path(folder)


def http_before_after(
    events: int, rounds: int = 2, before_revision: str | None = None, driver: str = "httpx"
) -> dict[str, Any]:
    """HTTP ingest before and after, alternating, `rounds` times each; the best of each side (the machine is
    shared) and every run. Before: the code of `before_revision`, or this checkout with the legacy decoder."""
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with source_tree(before_revision) as before_code:
        for _ in range(rounds):
            for side in ("before", "after"):
                if side == "after":
                    runs[side].append(http_ingest(events, driver=driver))
                elif before_code is None:
                    runs[side].append(http_ingest(events, legacy=True, driver=driver))
                else:
                    runs[side].append(http_ingest(events, code=before_code, driver=driver))
    rates = {side: [r.get("events_per_s", 0) for r in results] for side, results in runs.items()}
    before, after = max(rates["before"]), max(rates["after"])
    return {
        "before": f"git revision {before_revision}" if before_revision else "this checkout, legacy decoder",
        "before_events_per_s": before,
        "after_events_per_s": after,
        "after_to_before_ratio": round(after / before, 3) if before else None,
        "runs_events_per_s": rates,
        "driver": driver,
        "batch": 100,
        "failed_requests": sum(r.get("failed_requests", 0) for results in runs.values() for r in results),
    }


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The sink worker issue's targets, each with its measured ratio."""
    http = result.get("http_ingest_batches_of_100", {})
    return {
        "sink_to_raw >= 0.6": result["sink_to_raw_ratio"],
        "consume_and_decode_to_consume_only >= 0.75": result["consume_and_decode_to_consume_only_ratio"],
        "http_after_to_before >= 1.5": http.get("after_to_before_ratio"),
        "http_after_events_per_s >= 20000": http.get("after_events_per_s"),
    }


def spawn_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A sink worker process (`python -m ingest.sink`) with these settings."""
    return subprocess.Popen([sys.executable, "-m", "ingest.sink"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)


async def group_rate(kafka: KafkaSettings, workers: int, total: int, batch: int, data_dir: Path) -> dict[str, Any]:
    """`workers` sink processes (`python -m ingest.sink`) in one new consumer group over the whole topic: events/s
    from the first committed offset to the last (the processes' start and the group's join are excluded).
    ClickHouse: the server of METERGATE_CLICKHOUSE__URL (a database per measurement), else one embedded engine
    per worker (chdb allows one process per folder)."""
    group = f"scale-{workers}-{uuid.uuid4().hex[:8]}"
    server = os.environ.get("METERGATE_CLICKHOUSE__URL")
    base = {k: v for k, v in os.environ.items() if not k.startswith("METERGATE_")}
    base |= {
        "METERGATE_KAFKA__BOOTSTRAP_SERVERS": str(kafka.bootstrap_servers),
        "METERGATE_KAFKA__EVENTS_TOPIC": kafka.events_topic,
        "METERGATE_KAFKA__DEAD_LETTER_TOPIC": kafka.dead_letter_topic,
        "METERGATE_SINK__CONSUMER_GROUP": group,
        "METERGATE_SINK__SESSION_TIMEOUT_MS": "2000",
        "METERGATE_SINK__BATCH_SIZE": str(batch),
        "METERGATE_LOG__LEVEL": "WARNING",
    }
    procs = []
    for i in range(workers):
        env = dict(base)
        if server:
            env |= {
                "METERGATE_CLICKHOUSE__URL": server,
                "METERGATE_CLICKHOUSE__DATABASE": f"bench_{group}".replace("-", "_"),
            }
        else:
            env["METERGATE_CLICKHOUSE__PATH"] = str(data_dir / f"{group}-{i}")
        procs.append(spawn_worker(env))
    try:
        first: tuple[float, int] | None = None
        deadline = time.monotonic() + 600
        while True:
            committed = sum(
                max(0, v)
                for v in (
                    await committed_offsets(str(kafka.bootstrap_servers), group, kafka.events_topic, PARTITIONS)
                ).values()
            )
            now = time.perf_counter()
            if first is None and committed > 0:
                first = (now, committed)
            if committed >= total:
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                return {"error": f"the workers stopped or stalled at {committed} of {total} messages"}
            await asyncio.sleep(0.05)
        assert first is not None
        if now <= first[0]:
            return {"error": "everything was committed at the first look: use more --events"}
        return {"events_per_s": round((total - first[1]) / (now - first[0])), "messages_timed": total - first[1]}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


async def workers_part(workers: int, events: int, batch: int) -> dict[str, Any]:
    """One sink worker process and then `workers` of them in one group, on the same topic: the scale-out."""
    if workers > PARTITIONS:
        return {"requested": workers, "skipped": True, "reason": f"the bench topic has {PARTITIONS} partitions"}
    stream = build_stream(events, duplicate_rate=0.02, conflict_rate=0.0, malformed_rate=0.0, id_prefix="scale")
    total = len(stream.messages)
    with kafka_bootstrap() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        kafka = await topic_with(bootstrap, "bench-scale", stream.messages)
        one = await group_rate(kafka, 1, total, batch, Path(folder))
        many = await group_rate(kafka, workers, total, batch, Path(folder))
    server = bool(os.environ.get("METERGATE_CLICKHOUSE__URL"))
    out: dict[str, Any] = {
        "requested": workers,
        "messages": total,
        "one_worker": one,
        f"{workers}_workers": many,
        "clickhouse": "the server of METERGATE_CLICKHOUSE__URL"
        if server
        else "one embedded engine per worker: the workers' side of the scale-out, not a shared server's",
    }
    if "events_per_s" in one and "events_per_s" in many:
        out["scaling"] = round(many["events_per_s"] / one["events_per_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--http-events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=SinkSettings().batch_size, help="events per write (both)")
    parser.add_argument("--http-before", default=None, help="git revision whose code is the HTTP 'before'")
    parser.add_argument(
        "--http-driver",
        choices=("auto", "wrk", "httpx"),
        default="auto",
        help="HTTP load generator (auto: wrk if installed)",
    )
    parser.add_argument("--workers", type=int, default=1, help="N > 1: sink workers in one group (needs real servers)")
    args = parser.parse_args()
    configure_logging(LogSettings(level="WARNING"))  # logs to stderr; stdout is the JSON result
    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "batch_size": args.batch,
        "partitions": PARTITIONS,
    }
    result.update(asyncio.run(kafka_part(args.events, args.batch)))
    result["http_ingest_batches_of_100"] = (
        http_before_after(args.http_events, before_revision=args.http_before, driver=http_driver(args.http_driver))
        if args.http_events
        else {"skipped": True}
    )
    result["targets"] = targets(result)
    if args.workers > 1:
        result["workers"] = asyncio.run(workers_part(args.workers, args.events, args.batch))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
