"""Interpreter settings for the sink's hot loops (the Kafka worker's loop, the embedded log's life).

Both run decoding on the event loop while a worker thread makes the engine calls; both allocate
objects per event that live until their batch is written. Applied as a context, restored after.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator

# Collector thresholds while the loop runs (measured: the sink rate roughly doubles, see README).
# Measured on bench/ingest.py's 300k messages, alternating runs: (50_000, 20, 100) 36-40k events/s,
# (1_000_000, 20, 100) 45-48k; consume + decode alone 66-70k at 50_000, 82k at 200_000 or with no collector.
GC_THRESHOLDS = (1_000_000, 20, 100)
# GIL switch interval while the loop runs (the default is 5 ms).
SWITCH_INTERVAL_S = 0.001


@contextlib.contextmanager
def tuned_interpreter() -> Iterator[None]:
    """Interpreter settings for the loop, restored after it.

    - The collector runs far less often. The sink allocates ~10 objects per event that live until their
      batch is written, and aiokafka as many; the young generation holds the batches in flight, so a
      collection every 50k allocations still traced them every ~3k events. Cyclic garbage is rare here
      and waits at most a million allocations (about a second at full rate). At the default
      threshold (700) the collector ran every ~70 events and traced
      every held batch again and again. Nothing here builds reference cycles at that rate.
    - The GIL changes hands every 1 ms instead of 5. Every engine call of the writer thread waits for
      the GIL on its way back while the loop decodes: measured, a ledger insert took 37 ms instead of
      12 next to a busy thread at 5 ms, 12 ms at 1 ms; a trivial SELECT 7.4 ms instead of 2.1.
    """
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(interval)
