"""Engines and transactions for the entitlement state.

Two kinds of transaction, both short and synchronous (async callers hop to a thread):
- `read()`: one consistent view (REPEATABLE READ on PostgreSQL, a deferred BEGIN on SQLite in WAL mode),
  so a balance is never computed from a half-applied change.
- `write()`: serialised per entitlement. On PostgreSQL the repositories lock the entitlement row
  (SELECT ... FOR UPDATE); on SQLite every write transaction starts with BEGIN IMMEDIATE, which
  serialises all writers of the file.
Third-party connection errors become `Unavailable` at this boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.errors import Unavailable

_WRITE = "metergate_write"


def _normalise_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (the only PostgreSQL driver installed)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.removeprefix("postgres://")
    return url


def make_engine(url: str) -> Engine:
    url = _normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _sqlite_transactions(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def _sqlite_transactions(engine: Engine) -> None:
    """Take transaction control from pysqlite (which BEGINs lazily and never for reads)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class Database:
    """The entitlement database: a read and a write session factory over one connection pool."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        write_engine = self.engine.execution_options(**{_WRITE: True})
        read_engine = (
            self.engine.execution_options(isolation_level="REPEATABLE READ")
            if self.dialect == "postgresql"
            else self.engine
        )
        self._reads = sessionmaker(read_engine, expire_on_commit=False)
        self._writes = sessionmaker(write_engine, expire_on_commit=False)

    @property
    def locks_rows(self) -> bool:
        """Whether SELECT ... FOR UPDATE is meaningful (SQLite serialises writers instead)."""
        return self.dialect == "postgresql"

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._translate(), self._reads() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        with self._translate(), self._writes() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            raise Unavailable(f"the entitlement database is unavailable: {exc.orig}") from exc

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """A lock across every process sharing this database (common.usage.CatalogLock): a PostgreSQL
        session-level advisory lock on the key, held on a connection of its own. SQLite has one process
        (the embedded deployment), whose own locks already serialise."""
        if self.dialect != "postgresql":
            yield
            return
        conn = await asyncio.to_thread(self.engine.connect)
        try:
            lock = text("SELECT pg_advisory_lock(hashtext(:key))")
            await asyncio.to_thread(lambda: conn.execute(lock, {"key": key}))
            try:
                yield
            finally:
                unlock = text("SELECT pg_advisory_unlock(hashtext(:key))")
                await asyncio.to_thread(lambda: conn.execute(unlock, {"key": key}))
        finally:
            await asyncio.to_thread(conn.close)

    @contextlib.contextmanager
    def hold_sync(self, key: str) -> Iterator[None]:
        """`hold` for a worker thread: the same advisory lock, taken and released on this thread."""
        if self.dialect != "postgresql":
            yield
            return
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(hashtext(:key))"), {"key": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(hashtext(:key))"), {"key": key})

    def dispose(self) -> None:
        self.engine.dispose()
