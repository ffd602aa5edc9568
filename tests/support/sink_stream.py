"""A hostile event stream for the sink tests: unique events in both CloudEvents Kafka bindings, exact
duplicates, conflicting copies and malformed messages, with the table the sink must end up with."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from ingest.wire import message_key

# Recent, like real usage: the sink's in-memory key set covers two dedupe windows back from now. Some
# events (`late_rate`) are LATE_BY older, out of its reach: the sink looks those up in ClickHouse.
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)
LATE_BY = timedelta(days=90)
Key = tuple[str, str, str]
Message = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


@dataclass
class Stream:
    messages: list[Message] = field(default_factory=list)
    expected: dict[Key, str] = field(default_factory=dict)  # key -> canonical data of the first copy
    malformed: int = 0
    conflicts: int = 0
    duplicates: int = 0


def _structured(namespace: str, obj: dict[str, object]) -> Message:
    headers = [("content-type", b"application/cloudevents+json"), ("namespace", namespace.encode())]
    key = message_key(namespace, str(obj["source"]), str(obj["id"]))
    return key, orjson.dumps(obj), headers


def _binary(namespace: str, obj: dict[str, object]) -> Message:
    headers = [("ce_" + k, str(v).encode()) for k, v in obj.items() if k != "data"]
    headers += [("content-type", b"application/json"), ("namespace", namespace.encode())]
    key = message_key(namespace, str(obj["source"]), str(obj["id"]))
    return key, orjson.dumps(obj["data"]), headers


MALFORMED: list[Message] = [
    (None, b"{not json", [("namespace", b"acme")]),
    (None, b'{"specversion":"1.0","source":"s","type":"t","subject":"x"}', []),  # no id
    (None, b'{"specversion":"1.0","id":"m","source":"s","type":"t","subject":"x","time":"yesterday"}', []),
    (None, b'{"specversion":"0.3","id":"m","source":"s","type":"t","subject":"x"}', []),
    (None, b'{"specversion":"1.0","id":"m","source":"s","type":"t","subject":"x","data":[1,2]}', []),
    (None, b'{"specversion":"1.0","id":"m","source":"s","type":"t","subject":"x"}', [("namespace", b"\xff\xfe")]),
    (None, b"\x00\x01binary", [("ce_specversion", b"1.0"), ("ce_id", b"m"), ("ce_source", b"s")]),
    (None, b'{"a":1}', [("ce_specversion", b"1.0"), ("ce_id", b"m"), ("content-type", b"text/plain")]),
    (None, b"[]", [("content-type", b"application/cloudevents+json")]),
    (b"tombstone", None, []),
]


def build_stream(
    unique: int,
    *,
    duplicate_rate: float = 0.05,
    conflict_rate: float = 0.01,
    malformed_rate: float = 0.01,
    namespaces: tuple[str, ...] = ("acme", "globex"),
    seed: int = 7,
    id_prefix: str = "evt",
    late_rate: float = 0.02,
) -> Stream:
    """Originals come before their copies, and copies share the original's key (so its partition)."""
    rng = random.Random(seed)
    stream = Stream()
    originals: list[tuple[str, dict[str, object], bool]] = []
    for i in range(unique):
        namespace = namespaces[i % len(namespaces)]
        obj: dict[str, object] = {
            "specversion": "1.0",
            "id": f"{id_prefix}-{i:07d}",
            "source": f"svc-{i % 3}",
            "type": "llm.tokens" if i % 2 else "api.calls",
            "subject": f"customer-{rng.randrange(200)}",
            "time": (T0 + timedelta(milliseconds=i * 37) - (LATE_BY if rng.random() < late_rate else timedelta(0)))
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "data": {"tokens": rng.randrange(1, 5000), "model": rng.choice(["a", "b", "c"])},
        }
        binary = i % 4 == 3
        stream.messages.append(_binary(namespace, obj) if binary else _structured(namespace, obj))
        stream.expected[(namespace, str(obj["source"]), str(obj["id"]))] = orjson.dumps(
            obj["data"], option=orjson.OPT_SORT_KEYS
        ).decode()
        originals.append((namespace, obj, binary))
        r = rng.random()
        if originals and r < duplicate_rate:
            ns, o, b = originals[rng.randrange(max(0, len(originals) - 3000), len(originals))]
            stream.messages.append(_binary(ns, o) if b else _structured(ns, o))
            stream.duplicates += 1
        elif r < duplicate_rate + conflict_rate:
            ns, o, b = originals[rng.randrange(max(0, len(originals) - 3000), len(originals))]
            changed = {**o, "data": {"tokens": -1, "changed": True}}
            stream.messages.append(_binary(ns, changed) if b else _structured(ns, changed))
            stream.conflicts += 1
        elif r < duplicate_rate + conflict_rate + malformed_rate:
            stream.messages.append(MALFORMED[rng.randrange(len(MALFORMED))])
            stream.malformed += 1
    return stream
