"""How an event travels on the events topic (pure). Decoding of both CloudEvents Kafka bindings
(structured and binary mode) lives with the sink, which must accept what any producer sends.

Key: namespace + NUL + source + NUL + id, so duplicates of one event share a partition.
Headers: `namespace` (the tenant), `content-type: application/cloudevents+json` (structured mode),
`ingested_at` (RFC 3339, ms, when Metergate or the producer accepted the event).
"""

from __future__ import annotations

from datetime import datetime

from common.clock import format_time
from common.cloudevents import CloudEvent

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
NAMESPACE_HEADER = "namespace"
INGESTED_AT_HEADER = "ingested_at"
CONTENT_TYPE_HEADER = "content-type"


def message_key(namespace: str, source: str, event_id: str) -> bytes:
    return f"{namespace}\x00{source}\x00{event_id}".encode()


def encode_event(
    namespace: str, event: CloudEvent, ingested_at: datetime
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of one event in structured mode."""
    headers = [
        (CONTENT_TYPE_HEADER, STRUCTURED_CONTENT_TYPE.encode()),
        (NAMESPACE_HEADER, namespace.encode()),
        (INGESTED_AT_HEADER, format_time(ingested_at).encode()),
    ]
    return message_key(namespace, event.source, event.id), event.to_json(), headers
