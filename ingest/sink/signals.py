"""The sink worker as its own process, stopped by SIGTERM/SIGINT: `python -m ingest.sink` and
`metergate ingest-worker` both start it here.

A signal that arrives while the process still starts (slow imports, settings, joining the group) must mean
"stop cleanly once started" (flush, commit, exit 0), not the default abrupt death. So the handlers go in
before anything slow and remember the signal until the event loop takes over. For that reason this module
loads nothing but `signal`: `__main__` calls `catch_early_signals` before its other imports.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

    from common.settings import ClickHouseSettings, KafkaSettings
    from ingest.settings import SinkSettings

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


_caught: list[list[int]] = []  # the list of the first call, once made


def catch_early_signals() -> list[int]:
    """From now on SIGTERM/SIGINT are remembered instead of killing the process; the list fills as they come.

    Idempotent: a later call (the CLI's, after the console script's entry already called it before the
    CLI's slow imports) returns the same list, so no signal caught in between is forgotten."""
    if _caught:
        return _caught[0]
    early: list[int] = []

    def remember(signum: int, _frame: FrameType | None) -> None:
        early.append(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, remember)
    _caught.append(early)
    return early


def run_until_signalled(
    clickhouse: ClickHouseSettings, kafka: KafkaSettings, sink: SinkSettings, early: Sequence[int]
) -> None:
    """Run the worker until SIGTERM/SIGINT, then return once it has flushed and committed.

    `early` is the list `catch_early_signals` returned: a signal already in it stops the worker as soon as
    it has started, the same clean way.
    """
    import asyncio

    from ingest.sink.worker import run_worker

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        if early:
            stop.set()
        await run_worker(clickhouse, kafka, sink, stop=stop)

    asyncio.run(run())
