from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.clickhouse import ClickHouse, connect_clickhouse
from common.settings import ClickHouseSettings
from tests.support.services import kafka_bootstrap


@pytest.fixture(scope="session")
def kafka_bootstrap_servers() -> Iterator[str]:
    """One broker per test session (tansu unless KAFKA_BOOTSTRAP_SERVERS is set); tests use unique topics."""
    with kafka_bootstrap() as address:
        yield address


@pytest.fixture(scope="session")
def chdb_path() -> Iterator[Path]:
    """chdb allows one data folder per process, so the whole session shares one; tests get databases."""
    path = Path(tempfile.mkdtemp(prefix="chdb-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def clickhouse_settings(chdb_path: Path) -> ClickHouseSettings:
    """A random database per test, on CLICKHOUSE_URL when set, else on the embedded engine."""
    return ClickHouseSettings(
        url=os.environ.get("CLICKHOUSE_URL") or None,
        path=chdb_path,
        database=f"test_{uuid.uuid4().hex[:12]}",
    )


@pytest.fixture
def clickhouse(clickhouse_settings: ClickHouseSettings) -> Iterator[ClickHouse]:
    ch = connect_clickhouse(clickhouse_settings)
    try:
        yield ch
    finally:
        ch.command(f"DROP DATABASE IF EXISTS `{ch.database}` SYNC")
        if not ch.embedded:
            ch.close()
