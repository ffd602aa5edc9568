"""SIGKILL a process that inserts events and rolls them up, at random points, and restart it each time:
the meters' rollups alone (every stored event rolled up at the end) answer exactly as raw events do.

The process runs with its own chdb folder (one process per folder); the rolls are small (a few inserts
each) and the events span two months, so a kill lands inside rolls that write several parts.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BATCHES = 60

WORK = """
import sys
from datetime import UTC, datetime, timedelta
from aggregator.config import parse_config
from aggregator.repository import ClickHouseMeterRepository
from aggregator.roller import server_now
from common.clickhouse import connect_clickhouse
from common.settings import ClickHouseSettings
from tests.support.meter_events import insert

ch = connect_clickhouse(ClickHouseSettings(path=sys.argv[1], database="crash"))
repo = ClickHouseMeterRepository(ch)
repo.migrate()
repo.reconcile(parse_config({"meters": [
    {"slug": "tokens", "aggregation": "SUM", "eventType": "t", "valueProperty": "$.v", "groupBy": {"m": "$.m"}},
    {"slug": "users", "aggregation": "UNIQUE_COUNT", "eventType": "t", "valueProperty": "$.u"},
    {"slug": "peak", "aggregation": "MAX", "eventType": "t", "valueProperty": "$.v"},
    {"slug": "last", "aggregation": "LATEST", "eventType": "t", "valueProperty": "$.v"},
]}))
repo.roller.max_events = 250
t0 = datetime(2025, 1, 31, 23, 0, tzinfo=UTC)  # two months: a roll writes a part per month
first = int(sys.argv[3]) * int(sys.argv[2])  # each run its own batches: a run always has work left
for b in range(first, first + int(sys.argv[2])):
    events = [{"id": f"{b}-{i}", "time": t0 + timedelta(minutes=(b * 13 + i * 7) % 120, milliseconds=b * 100 + i),
               "subject": f"s{i % 5}", "type": "t", "data": {"v": b * 3 + i % 11, "m": "xy"[i % 2], "u": i % 17}}
              for i in range(100)]
    insert(ch, "ns", events, f"batch-{b}")  # a re-run inserts it again: dropped by its token
    repo.roller.roll_once()
repo.roller.catch_up(server_now(ch))
print("finished")
"""

READ = """
import json, sys
from datetime import UTC, datetime
from aggregator import sql
from aggregator.meter import WindowSize
from aggregator.query import shape_rows
from aggregator.repository import ClickHouseMeterRepository
from common.clickhouse import connect_clickhouse
from common.settings import ClickHouseSettings

ch = connect_clickhouse(ClickHouseSettings(path=sys.argv[1], database="crash"))
repo = ClickHouseMeterRepository(ch)
events = ch.rows(f"SELECT count() FROM {ch.table('events')}")[0][0]
out = {"intent_done": [str(m) for m in repo.roller.marks()], "events": events}
for meter in repo.live():
    for window in (None, WindowSize.MINUTE, WindowSize.HOUR):
        q = sql.Query(meter=meter, namespace="ns", start=datetime(2025, 1, 1, tzinfo=UTC),
                      end=datetime(2025, 3, 1, tzinfo=UTC), window=window, group_by=tuple(meter.group_by),
                      group_subject=True)
        answers = []
        for text, params in (sql.build_query(ch.database, q), sql.raw_query(ch.database, q)):
            answers.append(sorted(str((r.window_start, r.subject, sorted(r.group_by.items()), r.value))
                                  for r in shape_rows(q, ch.rows(text, parameters=params))))
        out[f"{meter.slug}/{window}"] = answers
print(json.dumps(out))
"""


def run(code: str, *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_sigkill_while_rolling_then_rollups_equal_raw_events() -> None:
    rng = random.Random()
    seed = rng.randrange(1_000_000)
    rng.seed(seed)
    with tempfile.TemporaryDirectory(prefix="metergate-roller-crash-") as folder:
        kills = 0
        for run_ in range(8):
            proc = subprocess.Popen([sys.executable, "-c", WORK, folder, str(BATCHES), str(run_)], cwd=ROOT)
            time.sleep(rng.uniform(1.5, 6.0))
            if proc.poll() is None:
                proc.kill()
                kills += 1
            proc.wait(60)
        assert "finished" in run(WORK, folder, str(BATCHES), "8")
        result = json.loads(run(READ, folder).strip().splitlines()[-1])
    assert kills >= 4, f"the process finished before most kills (seed {seed})"
    intent, done = result.pop("intent_done")
    assert intent == done
    assert result.pop("events") >= BATCHES * 100  # the last run's, and what the killed runs stored
    assert len(result) == 4 * 3
    for name, (from_rollups, from_raw) in result.items():
        assert from_raw, name
        assert from_rollups == from_raw, f"{name} (seed {seed})"
