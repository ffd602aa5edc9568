"""What every entitlement service needs: the database, the meter ports and the clocks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy.orm import Session

from common.clock import Clock, SystemClock
from common.usage import MeterCatalog, UsageReader
from entitlements.db.session import Database
from entitlements.domain import Owner
from entitlements.quotas import QuotaSettings

T = TypeVar("T")


@dataclass(frozen=True)
class Deps:
    """`clock` is the service's now (a frozen test clock in replays); `wall_clock` is real time, used only
    to stamp snapshots so they compare with event storage times (which never follow the test clock).
    The usage reader also answers the late-event question (`UsageReader.stored_after`)."""

    db: Database
    meters: MeterCatalog
    usage: UsageReader
    clock: Clock
    wall_clock: Clock = SystemClock()  # noqa: RUF009 - stateless and immutable
    quotas: QuotaSettings = field(default_factory=QuotaSettings)
    # Called with (namespace, subject key) after every committed state change of the subject's entitlements,
    # before the write's response is sent (the balance cache drops what the change made wrong).
    change_listeners: list[Callable[[str, str], None]] = field(default_factory=list)

    def changed(self, namespace: str, subject_key: str) -> None:
        for listener in self.change_listeners:
            listener(namespace, subject_key)

    def changed_owner(self, namespace: str, owner: Owner) -> None:
        """A change of an owner's entitlements: its key (a subject, or a customer's id) and its subjects."""
        for key in dict.fromkeys((owner.key, *owner.subjects)):
            self.changed(namespace, key)

    async def in_thread(self, fn: Callable[[], T]) -> T:
        """Run a synchronous function off the event loop."""
        return await asyncio.to_thread(fn)

    async def reading(self, fn: Callable[[Session], T]) -> T:
        """`fn` in one read transaction, off the event loop."""

        def run() -> T:
            with self.db.read() as session:
                return fn(session)

        return await asyncio.to_thread(run)

    async def writing(self, fn: Callable[[Session], T]) -> T:
        """`fn` in one write transaction (committed when it returns), off the event loop."""

        def run() -> T:
            with self.db.write() as session:
                return fn(session)

        return await asyncio.to_thread(run)
