"""A SIGTERM while the worker process is still starting means "stop cleanly once started": exit 0, for
`python -m ingest.sink` and `metergate ingest-worker` alike (the console script catches it before the
CLI's imports)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.support.sink_kafka import kafka_settings, make_topics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = {
    "python -m ingest.sink": [sys.executable, "-m", "ingest.sink"],
    "metergate ingest-worker": [
        sys.executable,
        "-c",
        "import sys; from metergate.entry import main; sys.argv = ['metergate', 'ingest-worker']; sys.exit(main())",
    ],
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("after_s", [0.15, 0.5])
async def test_an_early_sigterm_stops_the_worker_cleanly(
    kafka_bootstrap_servers: str, entry: str, after_s: float
) -> None:
    kafka = kafka_settings(kafka_bootstrap_servers, 2)
    await make_topics(kafka)
    with tempfile.TemporaryDirectory(prefix="chdb-sigterm-") as folder:
        env = {
            **os.environ,
            "METERGATE_CLICKHOUSE__PATH": folder,
            "METERGATE_CLICKHOUSE__DATABASE": f"sig_{uuid.uuid4().hex[:8]}",
            "METERGATE_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap_servers,
            "METERGATE_KAFKA__EVENTS_TOPIC": kafka.events_topic,
            "METERGATE_KAFKA__DEAD_LETTER_TOPIC": kafka.dead_letter_topic,
            "METERGATE_SINK__CONSUMER_GROUP": f"sig-{uuid.uuid4().hex[:8]}",
            "METERGATE_SINK__SESSION_TIMEOUT_MS": "2000",
            "METERGATE_LOG__LEVEL": "WARNING",
        }
        env.pop("METERGATE_CLICKHOUSE__URL", None)
        code, stderr = await asyncio.to_thread(start_then_sigterm, ENTRY_POINTS[entry], env, after_s)
        assert code == 0, f"{entry} died on an early SIGTERM ({code}): {stderr[-2000:]}"


def start_then_sigterm(command: list[str], env: dict[str, str], after_s: float) -> tuple[int, str]:
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(after_s)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err.decode(errors="replace")
