"""`python -m ingest.sink`: the sink worker on METERGATE_* settings (as `metergate ingest-worker`)."""

from __future__ import annotations

import asyncio

from common.logging import configure_logging
from ingest.sink.worker import run_worker
from metergate.settings import WorkerSettings


def main() -> None:
    settings = WorkerSettings()
    configure_logging(settings.log)
    asyncio.run(run_worker(settings.clickhouse, settings.kafka, settings.sink))


if __name__ == "__main__":
    main()
