"""SIGKILL the sink worker process at random points while it consumes, restart it each time: the final
table is exactly the unique set, a rollup fed by a materialized view counts every event once, and the
aggregator's real meter rollups (SUM, COUNT, UNIQUE_COUNT, LATEST, MAX) answer exactly as raw events do.

The worker runs as `python -m ingest.sink` with its own chdb folder; the test reads that folder from
another subprocess once no worker holds it (chdb allows one folder per process).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.support.sink_kafka import committed_offsets, kafka_settings, make_topics, produce
from tests.support.sink_stream import build_stream

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4
ROOT = Path(__file__).resolve().parents[2]

SETUP = """
import json, sys
from aggregator.meter import parse_meter
from aggregator.repository import ClickHouseMeterRepository
from common.clickhouse import connect_clickhouse
from common.settings import ClickHouseSettings
from ingest.sink.migrations import migrate_clickhouse
ch = connect_clickhouse(ClickHouseSettings(url=sys.argv[1] or None, path=sys.argv[2], database=sys.argv[3]))
migrate_clickhouse(ch)
ch.command(f"CREATE TABLE IF NOT EXISTS {ch.table('rollup')} (subject String, n UInt64) "
           "ENGINE = SummingMergeTree ORDER BY subject SETTINGS non_replicated_deduplication_window = 10000")
ch.command(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {ch.table('rollup_mv')} TO {ch.table('rollup')} "
           f"AS SELECT subject, count() AS n FROM {ch.table('events')} GROUP BY subject")
# The aggregator's real rollups (materialized views into minute and hour tables), one per aggregation kind.
repo = ClickHouseMeterRepository(ch)
repo.migrate()
meters = json.loads(sys.argv[4])
repo.reconcile([parse_meter(body, meter_id=f"crash{i}", namespace=None) for i, body in enumerate(meters)])
"""

READ = """
import json, sys
from common.clickhouse import connect_clickhouse
from common.settings import ClickHouseSettings
ch = connect_clickhouse(ClickHouseSettings(url=sys.argv[1] or None, path=sys.argv[2], database=sys.argv[3]))
events = [list(r) for r in ch.rows(f"SELECT namespace, source, id, data FROM {ch.table('events')}")]
raw = dict(ch.rows(f"SELECT subject, count() FROM {ch.table('events')} GROUP BY subject"))
rollup = dict(ch.rows(f"SELECT subject, sum(n) FROM {ch.table('rollup')} GROUP BY subject"))
meters = {}
from datetime import UTC, datetime, timedelta
from aggregator import sql
from aggregator.meter import WindowSize
from aggregator.repository import ClickHouseMeterRepository
from aggregator.query import shape_rows
from aggregator.roller import server_now
NOW = datetime.now(UTC)  # the stream's events are from yesterday, a few 90 days before
repo = ClickHouseMeterRepository(ch)
repo.roller.catch_up(server_now(ch))  # every stored event rolled up: the rollups alone must equal raw
for meter in repo.live():
    for namespace in ("acme", "globex"):
        for window in (None, WindowSize.HOUR, WindowSize.MINUTE):
            q = sql.Query(meter=meter, namespace=namespace, start=NOW - timedelta(days=99), end=NOW + timedelta(1),
                          window=window, tz="UTC", group_by=tuple(meter.group_by), group_subject=True)
            answers = []
            for build in (sql.build_query, sql.raw_query):
                text, params = build(ch.database, q)
                answers.append(sorted((str(r.window_start), r.subject, sorted(r.group_by.items()), str(r.value))
                                      for r in shape_rows(q, ch.rows(text, parameters=params))))
            meters[f"{meter.slug}/{namespace}/{window}"] = answers
print(json.dumps({"events": events, "raw": raw, "rollup": {k: int(v) for k, v in rollup.items()}, "meters": meters}))
"""

METERS = [
    {
        "slug": "tokens",
        "aggregation": "SUM",
        "eventType": "llm.tokens",
        "valueProperty": "$.tokens",
        "groupBy": {"model": "$.model"},
    },
    {"slug": "calls", "aggregation": "COUNT", "eventType": "api.calls"},
    {"slug": "models", "aggregation": "UNIQUE_COUNT", "eventType": "llm.tokens", "valueProperty": "$.model"},
    {"slug": "last_tokens", "aggregation": "LATEST", "eventType": "api.calls", "valueProperty": "$.tokens"},
    {"slug": "max_tokens", "aggregation": "MAX", "eventType": "llm.tokens", "valueProperty": "$.tokens"},
]


def python(code: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


async def test_sigkill_at_random_points_then_exactly_the_unique_set(kafka_bootstrap_servers: str) -> None:
    rng = random.Random()
    seed = rng.randrange(1_000_000)
    stream = build_stream(15_000, seed=seed)
    kafka = kafka_settings(kafka_bootstrap_servers, PARTITIONS)
    await make_topics(kafka)
    ends = await produce(kafka_bootstrap_servers, kafka.events_topic, stream.messages)
    total = first_total = sum(ends.values())

    url = os.environ.get("CLICKHOUSE_URL", "")
    database = f"crash_{uuid.uuid4().hex[:8]}"
    group = f"crash-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="chdb-crash-") as folder:
        python(SETUP, url, folder, database, json.dumps(METERS))
        env = {
            **os.environ,
            "METERGATE_CLICKHOUSE__PATH": folder,
            "METERGATE_CLICKHOUSE__DATABASE": database,
            "METERGATE_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap_servers,
            "METERGATE_KAFKA__EVENTS_TOPIC": kafka.events_topic,
            "METERGATE_KAFKA__DEAD_LETTER_TOPIC": kafka.dead_letter_topic,
            "METERGATE_SINK__CONSUMER_GROUP": group,
            "METERGATE_SINK__SESSION_TIMEOUT_MS": "2000",
            "METERGATE_SINK__BATCH_SIZE": str(rng.choice([150, 300, 700])),
            "METERGATE_SINK__BATCH_TIMEOUT_MS": "100",
            "METERGATE_LOG__LEVEL": "WARNING",
        }
        if url:
            env["METERGATE_CLICKHOUSE__URL"] = url

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen([sys.executable, "-m", "ingest.sink"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)

        async def consumed() -> int:
            committed = await committed_offsets(kafka_bootstrap_servers, group, kafka.events_topic, PARTITIONS)
            return sum(max(0, v) for v in committed.values())

        kills = 0
        progress = [0]
        for _ in range(5):
            proc = spawn()
            try:
                before = await consumed()
                for _ in range(300):  # kill only once this run has committed something: mid-consumption
                    await asyncio.sleep(0.1)
                    now = await consumed()
                    if now > before or now >= total:
                        break
                await asyncio.sleep(rng.uniform(0.0, 0.4))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            kills += 1
            progress.append(await consumed())
            if progress[-1] >= total:
                break

        # More events for the last run, so SIGTERM comes only after it consumed something (a SIGTERM during
        # interpreter start-up, before any handler exists, would just kill it).
        tail = build_stream(500, seed=seed + 1, id_prefix="tail", malformed_rate=0.0)
        for p, end in (await produce(kafka_bootstrap_servers, kafka.events_topic, tail.messages)).items():
            ends[p] = max(ends.get(p, 0), end)
        total = sum(ends.values())
        proc = spawn()
        try:
            for _ in range(600):
                if await consumed() >= total:
                    break
                await asyncio.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, "SIGTERM should flush, commit and exit cleanly"
        assert await consumed() == total

        result = json.loads(python(READ, url, folder, database).strip().splitlines()[-1])  # after its log lines

    assert kills >= 2
    assert any(0 < p < first_total for p in progress), f"no kill landed mid-consumption: {progress}"
    keys = [(ns, src, i) for ns, src, i, _ in result["events"]]
    assert len(keys) == len(set(keys)), f"{len(keys) - len(set(keys))} events stored twice (seed {seed})"
    assert {(ns, src, i): data for ns, src, i, data in result["events"]} == stream.expected | tail.expected, (
        f"seed {seed}"
    )
    assert result["rollup"] == result["raw"], f"the rollup double-counted or lost rows (seed {seed})"
    assert len(result["meters"]) == len(METERS) * 2 * 3
    for name, (from_rollups, from_raw) in result["meters"].items():
        assert from_rollups == from_raw, f"{name}: rollups differ from raw events after crashes (seed {seed})"
    for meter in METERS:  # the stream gives every meter usage in one namespace (type alternates with it)
        used = [k for k, (rows, _) in result["meters"].items() if k.startswith(f"{meter['slug']}/") and rows]
        assert used, f"{meter['slug']}: no usage at all (seed {seed})"
