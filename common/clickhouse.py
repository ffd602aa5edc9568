"""ClickHouse client factory: the embedded engine (chdb) or a server, behind one client API.

clickhouse-connect gives the same client for both (`interface="chdb"` runs ClickHouse in-process).
The chdb client is synchronous and holds a file lock on its folder, so one process owns it and calls
are serialised here; async code goes through `ClickHouse.run` which hops to a worker thread.
Third-party errors are translated at this boundary into `Unavailable`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from common.errors import Unavailable
from common.settings import ClickHouseSettings

T = TypeVar("T")

# The one minimum supported ClickHouse version. It is the engine line CI tests (the chdb package pinned in
# pyproject.toml ships it) and the line docker-compose.yml pins; tests/unit/test_clickhouse_version.py holds
# the three together.
MIN_ENGINE_VERSION = (26, 9)


class ClickHouse:
    """A client plus the database name, with a lock for the embedded engine."""

    def __init__(self, client: Client, database: str, *, embedded: bool) -> None:
        self.client = client
        self.database = database
        self.embedded = embedded
        self._lock = threading.RLock() if embedded else None
        self._known_settings: dict[str, bool] = {}

    def call(self, fn: Callable[[Client], T]) -> T:
        """Run fn(client) synchronously, translating connection failures into Unavailable."""
        try:
            if self._lock is None:
                return fn(self.client)
            with self._lock:
                return fn(self.client)
        except OperationalError as exc:
            raise Unavailable(f"ClickHouse is unavailable: {exc}") from exc

    async def run(self, fn: Callable[[Client], T]) -> T:
        return await asyncio.to_thread(self.call, fn)

    def command(
        self, sql: str, parameters: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
    ) -> Any:
        sent = self.supported(settings) if settings else None
        return self.call(lambda c: c.command(sql, parameters=parameters, settings=sent))

    def rows(
        self, sql: str, parameters: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
    ) -> Sequence[Sequence[Any]]:
        sent = self.supported(settings) if settings else None
        return self.call(lambda c: c.query(sql, parameters=parameters, settings=sent).result_rows)

    def supported(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """`settings` less the ones this engine does not know.

        Every setting the code sends goes through here: a server rejects an unknown setting
        (UNKNOWN_SETTING, code 115), and settings come and go across versions. The names are looked up
        once per client in `system.settings` and remembered.
        """
        unknown = [name for name in settings if name not in self._known_settings]
        if unknown:
            found = {
                str(row[0])
                for row in self.rows(
                    "SELECT name FROM system.settings WHERE name IN {names:Array(String)}",
                    parameters={"names": unknown},
                )
            }
            for name in unknown:
                self._known_settings[name] = name in found
        return {name: value for name, value in settings.items() if self._known_settings[name]}

    def table(self, name: str) -> str:
        """Fully qualified, quoted table name."""
        return f"`{self.database}`.`{name}`"

    def close(self) -> None:
        self.call(lambda c: c.close())


def column_type_names(ch: ClickHouse, table: str, columns: Sequence[str]) -> list[str]:
    """The types of `columns` of `table`, read once: given to every insert, they spare the client a
    DESCRIBE round trip per insert (an insert then costs one engine call)."""
    types = {str(row[0]): str(row[1]) for row in ch.rows(f"DESCRIBE TABLE {table}")}
    return [types[name] for name in columns]


def engine_version(ch: ClickHouse) -> tuple[int, int]:
    version = str(ch.rows("SELECT version()")[0][0])
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _resolve_driver_imports() -> None:
    """clickhouse-connect imports pandas (chdb depends on it) lazily, inside the first `insert` that
    checks whether it was given a DataFrame: ~0.5 s spent in the sink's first batch. Pay it here."""
    from clickhouse_connect.driver import options

    getattr(options, "pd", None)


def connect_clickhouse(settings: ClickHouseSettings) -> ClickHouse:
    """Open the configured engine and make sure the database exists and the engine is recent enough."""
    _resolve_driver_imports()
    try:
        if settings.url is None:
            try:
                import chdb  # noqa: F401 - only to say what is missing before clickhouse-connect does
            except ImportError:
                raise Unavailable(
                    "the embedded ClickHouse engine is not installed: `pip install 'metergate[embedded]'`, or set "
                    "METERGATE_CLICKHOUSE__URL to a ClickHouse server"
                ) from None
            settings.path.mkdir(parents=True, exist_ok=True)
            client = clickhouse_connect.get_client(interface="chdb", path=str(settings.path))
            ch = ClickHouse(client, settings.database, embedded=True)
        else:
            url = urlparse(settings.url)
            client = clickhouse_connect.get_client(
                host=url.hostname or "localhost",
                port=url.port or (8443 if url.scheme == "https" else 8123),
                # user and password are percent-decoded: a password with @ / # % is written %40 %2F %23 %25
                username=unquote(url.username or "default"),
                password=unquote(url.password or ""),
                secure=url.scheme == "https",
                autogenerate_session_id=False,
            )
            ch = ClickHouse(client, settings.database, embedded=False)
    except (OperationalError, DatabaseError, ClickHouseError) as exc:
        raise Unavailable(f"cannot open ClickHouse: {exc}") from exc
    version = engine_version(ch)
    if version < MIN_ENGINE_VERSION:
        raise Unavailable(
            f"ClickHouse {version[0]}.{version[1]} is too old: Metergate needs "
            f"{MIN_ENGINE_VERSION[0]}.{MIN_ENGINE_VERSION[1]} or newer (insert dedupe semantics)"
        )
    ch.command(f"CREATE DATABASE IF NOT EXISTS `{settings.database}`")
    return ch
