"""`python -m ingest.sink`: the sink worker on METERGATE_* settings (as `metergate ingest-worker`).

SIGTERM/SIGINT are caught from the first line: one that arrives while the (slow) imports still run
must still mean "flush, commit, exit 0", not an abrupt death (see ingest/sink/signals.py).
"""

from __future__ import annotations

import sys

from ingest.sink.signals import catch_early_signals, run_until_signalled

_early_signals = catch_early_signals()

from common.logging import configure_logging  # noqa: E402
from ingest.settings import WorkerSettings  # noqa: E402


def main() -> None:
    settings = WorkerSettings()
    configure_logging(settings.log)
    run_until_signalled(settings.clickhouse, settings.kafka, settings.sink, _early_signals)


if __name__ == "__main__":
    main()
    sys.exit(0)
