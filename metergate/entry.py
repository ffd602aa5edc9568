"""The `metergate` console script: what must happen before the CLI's imports (about a second of them).

`metergate ingest-worker` must treat a SIGTERM that arrives while the process starts as "stop cleanly once
started" (flush, commit, exit 0), like `python -m ingest.sink`; so its handlers go in here, before
metergate.cli imports uvicorn, the app and the rest.
"""

from __future__ import annotations

import sys


def main() -> int:
    if "ingest-worker" in sys.argv[1:]:
        from ingest.sink.signals import catch_early_signals

        catch_early_signals()
    from metergate.cli import main as cli_main

    return cli_main()
