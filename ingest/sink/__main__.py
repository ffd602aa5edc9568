"""`python -m ingest.sink`: the sink worker on METERGATE_* settings (as `metergate ingest-worker`).

SIGTERM/SIGINT are caught from the first line: one that arrives while the (slow) imports still run
must still mean "flush, commit, exit 0", not an abrupt death.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

_early_signals: list[int] = []


def _remember(signum: int, _frame: FrameType | None) -> None:
    _early_signals.append(signum)


signal.signal(signal.SIGTERM, _remember)
signal.signal(signal.SIGINT, _remember)

import asyncio  # noqa: E402

from common.logging import configure_logging  # noqa: E402
from ingest.sink.worker import run_worker  # noqa: E402
from metergate.settings import WorkerSettings  # noqa: E402


async def _run(settings: WorkerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if _early_signals:
        stop.set()
    await run_worker(settings.clickhouse, settings.kafka, settings.sink, stop=stop)


def main() -> None:
    settings = WorkerSettings()
    configure_logging(settings.log)
    asyncio.run(_run(settings))


if __name__ == "__main__":
    main()
    sys.exit(0)
