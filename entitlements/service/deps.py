"""What every entitlement service needs: the database, the meter ports and the clocks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from common.clock import Clock, SystemClock
from common.usage import MeterCatalog, UsageReader
from entitlements.db.session import Database

T = TypeVar("T")


@dataclass(frozen=True)
class Deps:
    """`clock` is the service's now (a frozen test clock in replays); `wall_clock` is real time, used only
    to stamp snapshots so they compare with event storage times (which never follow the test clock)."""

    db: Database
    meters: MeterCatalog
    usage: UsageReader
    clock: Clock
    wall_clock: Clock = SystemClock()  # noqa: RUF009 - stateless and immutable

    async def in_thread(self, fn: Callable[[], T]) -> T:
        """Run a synchronous transaction off the event loop."""
        return await asyncio.to_thread(fn)
