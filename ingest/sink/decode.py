"""Decoding of the events topic (pure): both CloudEvents Kafka protocol bindings -> a validated event.

Structured mode: the value is the JSON event (content-type application/cloudevents+json).
Binary mode: attributes in `ce_*` headers (ce_specversion marks the mode), data as the JSON value,
the content-type header being the data's content type.

Every message ends as either `Decoded` or `Malformed(reason)`; nothing here raises, so one hostile
message can never block a partition. The result depends only on the message (value, headers, Kafka
timestamp) and the default namespace, so a replay always decodes the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from common.cloudevents import (
    MAX_EVENT_TIME,
    MIN_EVENT_TIME,
    CloudEvent,
    EventValidationError,
    parse_time,
    validate_event,
)
from ingest.wire import CONTENT_TYPE_HEADER, INGESTED_AT_HEADER, NAMESPACE_HEADER

BINARY_PREFIX = "ce_"
SPECVERSION_HEADER = "ce_specversion"
NAMESPACE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_VALUE_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 4096
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Decoded:
    namespace: str
    event: CloudEvent
    ingested_at: datetime


@dataclass(frozen=True, slots=True)
class Malformed:
    reason: str


def timestamp_to_datetime(timestamp_ms: int) -> datetime | None:
    """A Kafka timestamp (ms since the epoch) as an aware UTC datetime, None when unusable."""
    if not isinstance(timestamp_ms, int) or timestamp_ms < 0:
        return None
    at = _EPOCH + timedelta(milliseconds=timestamp_ms)
    return at if MIN_EVENT_TIME <= at < MAX_EVENT_TIME else None


def _header_text(raw: object, name: str) -> str:
    if not isinstance(raw, bytes | bytearray):
        raise EventValidationError(f"header {name} must be bytes", field=name)
    if len(raw) > MAX_HEADER_BYTES:
        raise EventValidationError(f"header {name} is longer than {MAX_HEADER_BYTES} bytes", field=name)
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise EventValidationError(f"header {name} is not UTF-8", field=name) from None


def _headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    """Header values as text; the first occurrence of a name wins (deterministic for duplicates)."""
    out: dict[str, str] = {}
    for name, raw in headers:
        if not isinstance(name, str):
            raise EventValidationError("a header name is not text", field=None)
        lowered = name.lower()
        if lowered not in out:
            out[lowered] = _header_text(raw, lowered)
    return out


def _binary_event(value: bytes | None, headers: dict[str, str]) -> dict[str, Any]:
    """The binary-mode attributes and data as one structured-mode dict."""
    obj: dict[str, Any] = {}
    for name, text in headers.items():
        if name.startswith(BINARY_PREFIX) and len(name) > len(BINARY_PREFIX):
            obj[name[len(BINARY_PREFIX) :]] = text
    content_type = headers.get(CONTENT_TYPE_HEADER)
    if content_type is not None:
        media = content_type.split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise EventValidationError("binary-mode content-type must be application/json", field="datacontenttype")
    if value:
        try:
            obj["data"] = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise EventValidationError(f"binary-mode data is not JSON: {exc}", field="data") from None
    return obj


def decode_message(
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    timestamp_ms: int,
    default_namespace: str,
) -> Decoded | Malformed:
    """Decode one message of the events topic. Never raises."""
    try:
        return _decode(value, headers, timestamp_ms, default_namespace)
    except EventValidationError as exc:
        return Malformed(exc.message if exc.field is None else f"{exc.field}: {exc.message}")
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # hostile input the checks missed
        return Malformed(f"undecodable message: {type(exc).__name__}")


def _decode(
    value: bytes | None,
    raw_headers: Sequence[tuple[str, bytes]],
    timestamp_ms: int,
    default_namespace: str,
) -> Decoded | Malformed:
    if value is not None and len(value) > MAX_VALUE_BYTES:
        return Malformed(f"value is larger than {MAX_VALUE_BYTES} bytes")
    headers = _headers(raw_headers) if raw_headers else {}
    kafka_time = timestamp_to_datetime(timestamp_ms)

    namespace = headers.get(NAMESPACE_HEADER, default_namespace)
    if not NAMESPACE_PATTERN.match(namespace):
        return Malformed("namespace header must be 1 to 64 characters of [A-Za-z0-9_-]")

    raw_ingested = headers.get(INGESTED_AT_HEADER)
    ingested_at = kafka_time if raw_ingested is None else parse_time(raw_ingested, field=INGESTED_AT_HEADER)
    if ingested_at is None:
        return Malformed("no ingested_at header and the Kafka timestamp is unusable")

    obj: Any
    if SPECVERSION_HEADER in headers:
        obj = _binary_event(value, headers)
    else:
        content_type = headers.get(CONTENT_TYPE_HEADER)
        if content_type is not None and not content_type.lower().startswith("application/cloudevents+json"):
            return Malformed("content-type must be application/cloudevents+json (or use binary mode)")
        if not value:
            return Malformed("empty value")
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return Malformed(f"value is not JSON: {exc}")

    if isinstance(obj, dict) and obj.get("time") is None and kafka_time is None:
        return Malformed("event has no time and the Kafka timestamp is unusable")
    event = validate_event(obj, default_time=kafka_time or ingested_at)
    return Decoded(namespace, event, ingested_at)
