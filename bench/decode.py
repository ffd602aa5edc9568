"""Decoder benchmark (prints JSON): the sink's per-message work on the event loop, no Kafka and no engine,
on the compiled decoder (common/_cevents.c) and on its Python reference, side by side in one run.

On the events bench/ingest.py produces (both CloudEvents bindings), as aiokafka `ConsumerRecord`s in batches
of 5,000, under the sink's interpreter settings: `Decoder.decode_records` (records -> Items, the batch
digest's numbers) per structured-mode and per binary-mode message, `batch_from_records` (the same plus the
digest and dead letters) on the mixed stream, and the writer's prepare pass (`Preparer.prepare`) per event.
Each figure is the best of `--repeat` passes over all batches, in microseconds per message.

    python bench/decode.py [--events 40000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka.structs import ConsumerRecord

from common.cloudevents import NATIVE
from ingest.sink.batch import OffsetRange
from ingest.sink.consumer import batch_from_records
from ingest.sink.decode import Decoder
from ingest.sink.dedupe import Item
from ingest.sink.prepare import Preparer
from ingest.sink.tuning import tuned_interpreter
from tests.support.sink_stream import build_stream

BATCH = 5_000
SHARED_TIMESTAMP = 50  # messages per Kafka timestamp (a producer sends many per millisecond)


def batches_of(events: int, mode: str) -> list[list[Any]]:
    stream = build_stream(events, duplicate_rate=0.02, conflict_rate=0.0, malformed_rate=0.0)
    records = []
    for offset, (key, value, headers) in enumerate(stream.messages):
        binary = any(name.startswith("ce_") for name, _ in headers)
        if (mode == "structured" and binary) or (mode == "binary" and not binary):
            continue
        timestamp = 1_764_850_000_000 + offset // SHARED_TIMESTAMP
        records.append(ConsumerRecord("events", 0, offset, timestamp, 0, key, value, None, -1, -1, tuple(headers)))
    return [records[i : i + BATCH] for i in range(0, len(records), BATCH)]


def per_message(batches: list[list[Any]], step: Callable[[list[Any]], object], repeat: int) -> float:
    count = sum(len(b) for b in batches)
    best = float("inf")
    with tuned_interpreter():
        for _ in range(repeat):
            started = time.perf_counter()
            for batch in batches:
                step(batch)
            best = min(best, time.perf_counter() - started)
    return round(best / count * 1e6, 3)


def side_by_side(compiled: float, python: float) -> dict[str, float]:
    return {"compiled_us": compiled, "python_us": python, "speedup": round(python / compiled, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if not NATIVE:
        print(json.dumps({"skipped": "the C extension (common/_cevents.c) is not built"}))
        return
    result: dict[str, Any] = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()}}
    for mode in ("structured", "binary"):
        batches = batches_of(args.events, mode)
        gc.collect()
        gc.freeze()
        result[f"decode_records_{mode}"] = side_by_side(
            per_message(batches, lambda b: Decoder("default").decode_records(b, Item), args.repeat),
            per_message(batches, lambda b: Decoder("default")._decode_records(b, Item), args.repeat),
        )
    batches = batches_of(args.events, "all")

    def whole(batch: list[Any]) -> object:
        return batch_from_records("events", 0, OffsetRange(batch[0].offset, batch[-1].offset), batch, "default")

    result["batch_from_records_mixed"] = {"compiled_us": per_message(batches, whole, args.repeat)}
    items = [Decoder("default").decode_records(b, Item).items for b in batches]
    preparer = Preparer()
    by_items = {id(b): i for i, b in enumerate(batches)}
    result["prepare"] = side_by_side(
        per_message(batches, lambda b: preparer.prepare(items[by_items[id(b)]]), args.repeat),
        per_message(batches, lambda b: preparer._prepare(items[by_items[id(b)]]), args.repeat),
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
