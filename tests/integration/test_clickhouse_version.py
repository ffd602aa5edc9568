"""One minimum ClickHouse version: what the code declares, what compose pins and what CI runs (chdb) agree,
and every setting the code sends is filtered to those the engine knows (a server rejects unknown ones)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from clickhouse_connect.driver.exceptions import DatabaseError

from aggregator.meter import parse_meter
from aggregator.repository import ClickHouseMeterRepository
from common.clickhouse import MIN_ENGINE_VERSION, ClickHouse, engine_version
from ingest.sink.processor import PINNED_INSERT_SETTINGS, supported_insert_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def compose_clickhouse_line() -> tuple[int, int]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image = str(compose["services"]["clickhouse"]["image"])
    match = re.fullmatch(r"clickhouse/clickhouse-server:(\d+)\.(\d+)(?:\.\d+)*", image)
    assert match, f"compose must pin clickhouse-server to a version tag, not {image!r}"
    return int(match.group(1)), int(match.group(2))


def test_compose_pins_the_declared_minimum() -> None:
    assert compose_clickhouse_line() == MIN_ENGINE_VERSION


def test_the_engine_ci_runs_is_the_declared_line(clickhouse: ClickHouse) -> None:
    if not clickhouse.embedded:
        pytest.skip("CLICKHOUSE_URL points at a server: the chdb engine line is not what runs")
    assert engine_version(clickhouse) == MIN_ENGINE_VERSION


def test_unknown_settings_are_filtered_not_sent(clickhouse: ClickHouse) -> None:
    # What a server of another version does with a setting it does not know: refuse the whole statement.
    with pytest.raises(DatabaseError, match=r"(?i)unknown setting|UNKNOWN_SETTING|115"):
        clickhouse.call(lambda c: c.command("SELECT 1", settings={"metergate_no_such_setting": 1}))
    # Through the one filter it is dropped, and the known ones are kept.
    kept = clickhouse.supported({"metergate_no_such_setting": 1, "async_insert": 0})
    assert kept == {"async_insert": 0}
    assert clickhouse.command("SELECT 1", settings={"metergate_no_such_setting": 1}) == 1
    assert clickhouse.rows("SELECT 2", settings={"metergate_no_such_setting": 1}) == [(2,)]


def test_pinned_insert_settings_all_exist_on_the_minimum(clickhouse: ClickHouse) -> None:
    assert supported_insert_settings(clickhouse) == PINNED_INSERT_SETTINGS


class RecordingClient:
    """The real client, with the settings of every call written down (a pass-through, not a fake)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.sent: list[str] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._client, name)
        if name not in {"insert", "raw_insert", "command", "query"}:
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self.sent.extend((kwargs.get("settings") or {}).keys())
            return target(*args, **kwargs)

        return call


def test_meter_writes_send_only_settings_the_engine_knows(clickhouse: ClickHouse) -> None:
    # The meters table write once sent `deduplicate_insert` unfiltered (unknown before 26.2): every meter
    # create failed on the server compose pinned. Make the engine look like one without that setting (the
    # filter's memory is what it consults) and check that nothing it lacks is ever sent.
    clickhouse._known_settings["deduplicate_insert"] = False
    recorder = RecordingClient(clickhouse.client)
    clickhouse.client = recorder  # type: ignore[assignment]
    repo = ClickHouseMeterRepository(clickhouse)
    repo.migrate()
    body = {"slug": "tokens", "aggregation": "SUM", "eventType": "t", "valueProperty": "$.v"}
    repo.create(parse_meter(body, meter_id="m1", namespace="ns"))
    repo.drop(repo.live()[0])
    assert recorder.sent, "the meter writes sent no settings at all: the check below would prove nothing"
    assert "deduplicate_insert" not in recorder.sent
