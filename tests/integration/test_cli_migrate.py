"""`metergate migrate` as a real subprocess against tansu, with its own chdb folder: topics and tables
are created, and a second run changes nothing and still succeeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("METERGATE_")}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


async def test_migrate_creates_topics_and_tables_idempotently(kafka_bootstrap_servers: str, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    env = {
        "METERGATE_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap_servers,
        "METERGATE_KAFKA__EVENTS_TOPIC": f"mig_events_{suffix}",
        "METERGATE_KAFKA__DEAD_LETTER_TOPIC": f"mig_dlq_{suffix}",
        "METERGATE_KAFKA__TOPIC_PARTITIONS": "3",
        "METERGATE_CLICKHOUSE__PATH": str(tmp_path / "clickhouse"),
        "METERGATE_CLICKHOUSE__DATABASE": "migrated",
        "METERGATE_DATABASE__URL": f"sqlite:///{tmp_path / 'state' / 'state.db'}",
        "METERGATE_LOG__LEVEL": "WARNING",
    }
    for attempt in (1, 2):
        result = run(["-m", "metergate", "migrate"], env)
        assert result.returncode == 0, f"run {attempt}: {result.stderr}"
        assert "migrations applied" in result.stdout

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics(
            [env["METERGATE_KAFKA__EVENTS_TOPIC"], env["METERGATE_KAFKA__DEAD_LETTER_TOPIC"]]
        )
    finally:
        await admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == {
        env["METERGATE_KAFKA__EVENTS_TOPIC"]: 3,
        env["METERGATE_KAFKA__DEAD_LETTER_TOPIC"]: 3,
    }

    # The chdb folder belongs to one process at a time: read it from a fresh one.
    probe = run(
        [
            "-c",
            "import json, clickhouse_connect, sys;"
            f"c = clickhouse_connect.get_client(interface='chdb', path={str(tmp_path / 'clickhouse')!r});"
            "print(json.dumps([r[0] for r in c.query('SHOW TABLES FROM migrated').result_rows]))",
        ],
        {},
    )
    assert probe.returncode == 0, probe.stderr
    tables = set(json.loads(probe.stdout.strip().splitlines()[-1]))
    assert "events" in tables
    assert (tmp_path / "state" / "state.db").is_file()
