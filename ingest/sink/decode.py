"""Decoding of the events topic (pure): both CloudEvents Kafka protocol bindings -> a validated event.

Structured mode: the value is the JSON event (content-type application/cloudevents+json; a message
without ce_specversion whose value is a JSON object carrying specversion is structured whatever its
content-type says, as the official SDKs label it with the data's content type).
Binary mode: attributes in `ce_*` headers (ce_specversion marks the mode), data as the JSON value,
the content-type header being the data's content type.

Every message ends as either `Decoded` or `Malformed(reason)`; nothing here raises, so one hostile
message can never block a partition. The result depends only on the message (value, headers, Kafka
timestamp) and the default namespace, so a replay always decodes the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any, Generic, NamedTuple, TypeVar

import orjson

from common import exactjson
from common.clock import EPOCH, to_millis
from common.cloudevents import (
    ATTRIBUTE_NAMES,
    DATA_DECODE,
    DOCUMENT_DECODE,
    MAX_ATTRIBUTE_LENGTH,
    MAX_EVENT_TIME,
    MIN_EVENT_TIME,
    NATIVE,
    CloudEvent,
    EventValidationError,
    decode_document,
    event_from_binary,
    event_from_document,
    parse_time,
    validate_event,
)
from common.records import equal_to_own_kind
from common.settings import NAMESPACE_PATTERN
from ingest.sink.digest import digest_numbers
from ingest.wire import CONTENT_TYPE_HEADER, INGESTED_AT_HEADER, NAMESPACE_HEADER, STRUCTURED_CONTENT_TYPE

if NATIVE:
    from common import _cevents

BINARY_PREFIX = "ce_"
SPECVERSION_HEADER = "ce_specversion"
MAX_VALUE_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 4096
STRUCTURED_CONTENT_TYPE_BYTES = STRUCTURED_CONTENT_TYPE.encode()
JSON_CONTENT_TYPE_BYTES = b"application/json"
# Binary mode needs at least five ce_ headers: sets of up to four go through the structured-mode memo.
_PLAN_MAX_HEADERS = 4
_FEW_HEADERS = 4  # below this many headers, `_raw_headers` is faster than the dict() and memo lookup


@equal_to_own_kind
class Decoded(NamedTuple):
    """A NamedTuple (built per message: 0.2 us against 0.4 us for a frozen dataclass); equal only to a
    Decoded, like the dataclass it replaces."""

    namespace: str
    event: CloudEvent
    ingested_at: datetime


@dataclass(frozen=True, slots=True)
class Malformed:
    reason: str


T = TypeVar("T")
_OFFSET, _TIMESTAMP, _VALUE, _HEADERS = map(attrgetter, ("offset", "timestamp", "value", "headers"))


class Records(NamedTuple, Generic[T]):
    """A batch of Kafka records decoded: the kept items in order, the refused by their index in the batch,
    the (offset, timestamp, value length) triples of the batch digest as native int64 bytes (None when one
    does not fit: `digest_numbers` then says why) and the records' values."""

    items: list[T]
    rejected: list[tuple[int, Malformed]]
    numbers: bytes | None
    values: list[bytes | None]


_MAX_TIMESTAMP_MS = to_millis(MAX_EVENT_TIME)


def timestamp_to_datetime(timestamp_ms: int) -> datetime | None:
    """A Kafka timestamp (ms since the epoch) as an aware UTC datetime, None when unusable."""
    if not isinstance(timestamp_ms, int) or not 0 <= timestamp_ms < _MAX_TIMESTAMP_MS:  # no timedelta overflow
        return None
    at = EPOCH + timedelta(milliseconds=timestamp_ms)
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


def _raw_headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, bytes]:
    """Header values by lower-cased name; the first occurrence of a name wins (deterministic)."""
    out: dict[str, bytes] = {}
    for name, raw in headers:
        if not isinstance(name, str):
            raise EventValidationError("a header name is not text", field=None)
        lowered = name.lower()
        if lowered not in out:
            out[lowered] = raw
    return out


# The binary-mode attributes of a list of header names that are distinct lower-case text: (header name,
# attribute name) in header order, as `_binary_event` reads them; memoised per list of names.
_Layout = tuple[tuple[str, str], ...]


def _layout(names: tuple[object, ...]) -> _Layout | None:
    """The layout of these header names, None unless they are text already lower-case (then, being
    distinct, `dict(headers)` is what `_raw_headers` builds)."""
    if not all(type(name) is str and name.lower() == name for name in names):
        return None
    return tuple(
        (name, name[len(BINARY_PREFIX) :])
        for name in names
        if isinstance(name, str) and name.startswith(BINARY_PREFIX) and len(name) > len(BINARY_PREFIX)
    )


def _attributes_template(layout: _Layout) -> bytes | None:
    """`{"id":"%s",...}` for the attributes of a layout (bytes %-formatting fills in the header values),
    None when one is not an attribute of the schema (an extension, `data`) or one repeats."""
    names = [attribute for _, attribute in layout]
    if not set(names) <= ATTRIBUTE_NAMES or len(set(names)) != len(names):
        return None
    return b"{" + b",".join(b'"%s":"%%s"' % name.encode() for name in names) + b"}"


def _binary_event(value: bytes | None, headers: dict[str, bytes], layout: _Layout | None = None) -> dict[str, Any]:
    """The binary-mode attributes and data as one structured-mode dict.

    With the headers' layout the attributes are read in one tight loop (no `_header_text` call per
    header, no prefix test per name); anything unusual (not bytes, too long, not UTF-8) goes back to
    the per-header loop, which raises the error for the first such header.
    """
    obj: dict[str, Any] = {}
    if layout is not None:
        try:
            for name, attribute in layout:
                raw = headers[name]
                if type(raw) is not bytes or len(raw) > MAX_HEADER_BYTES:
                    layout = None
                    break
                obj[attribute] = raw.decode()
        except UnicodeDecodeError:
            layout = None
    if layout is None:
        obj = {}
        for name, raw in headers.items():
            if name.startswith(BINARY_PREFIX) and len(name) > len(BINARY_PREFIX):
                obj[name[len(BINARY_PREFIX) :]] = _header_text(raw, name)
    content_type = headers.get(CONTENT_TYPE_HEADER)
    if content_type is not None and content_type != JSON_CONTENT_TYPE_BYTES:
        media = _header_text(content_type, CONTENT_TYPE_HEADER).split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise EventValidationError("binary-mode content-type must be application/json", field="datacontenttype")
    if value:
        try:
            obj["data"] = exactjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise EventValidationError(f"binary-mode data is not JSON: {exc}", field="data") from None
        except exactjson.InexactNumberError as exc:
            raise EventValidationError(str(exc), field="data") from None
    return obj


class Decoder:
    """Decodes messages of the events topic. Pure: the memo only caches results of pure functions of
    header values (a batch's messages mostly share their namespace and ingested_at)."""

    MEMO_LIMIT = 4096

    def __init__(self, default_namespace: str) -> None:
        self.default_namespace = default_namespace
        self._namespaces: dict[bytes, str] = {}
        self._times: dict[bytes, datetime] = {}
        self._timestamps: dict[int, datetime | None] = {}
        self._layouts: dict[tuple[object, ...], _Layout | None] = {}
        self._plans: dict[tuple[object, ...], tuple[str, datetime | None] | None] = {}
        self._templates: dict[_Layout, bytes | None] = {}

    def decode(
        self, value: bytes | None, headers: Sequence[tuple[str, bytes]], timestamp_ms: int
    ) -> Decoded | Malformed:
        """Decode one message. Never raises.

        Structured mode first, in as few steps as it takes: the message's header set (aiokafka gives a
        tuple; producers send the same few) maps to its namespace and ingested_at through a memo, and the
        value goes through the compiled schema. Any other message, and any that does not pass at first
        sight, takes the general path, which decides in the documented order and names the reason."""
        try:
            if type(headers) is tuple and len(headers) <= _PLAN_MAX_HEADERS and value and len(value) <= MAX_VALUE_BYTES:
                plan = self._structured_plan(headers)
                if plan is not None:
                    doc = decode_document(value)
                    if doc is not None:
                        namespace, ingested_at = plan
                        kafka_time = self._timestamp(timestamp_ms)  # an event without time has the message's
                        if ingested_at is None:
                            ingested_at = kafka_time
                        if ingested_at is not None:
                            event = event_from_document(doc, kafka_time)
                            if event is not None:
                                return Decoded(namespace, event, ingested_at)
            return self._decode(value, headers, timestamp_ms)
        except EventValidationError as exc:
            return Malformed(exc.message if exc.field is None else f"{exc.field}: {exc.message}")
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # hostile input the checks missed
            return Malformed(f"undecodable message: {type(exc).__name__}")

    def decode_records(self, records: list[Any], item: Callable[[int, Decoded], T]) -> Records[T]:
        """`decode` over aiokafka records (anything with value, headers, timestamp, offset), with `item`
        wrapping each decoded message with its offset. Compiled when the extension is built
        (common/_cevents.c: both bindings' usual forms in C, any other record through `decode`), else
        `_decode_records`; the two agree on every batch (tests/unit/test_native_events.py)."""
        if not NATIVE:
            return self._decode_records(records, item)
        # C reads the memos and their fillers by name: _plans/_structured_plan, _namespaces/_namespace,
        # _times/_ingested_at, decode, default_namespace
        return Records(*_cevents.decode_records(records, self, Decoded, item))  # type: ignore[arg-type]

    def _decode_records(self, records: list[Any], item: Callable[[int, Decoded], T]) -> Records[T]:
        """The reference of `decode_records`, in Python."""
        items: list[T] = []
        rejected: list[tuple[int, Malformed]] = []
        decode = self.decode
        keep = items.append  # the loop runs once per message: no attribute lookups it can avoid
        offsets, timestamps = list(map(_OFFSET, records)), list(map(_TIMESTAMP, records))
        values = list(map(_VALUE, records))
        try:
            numbers: bytes | None = digest_numbers(offsets, timestamps, values)
        except (OverflowError, TypeError, ValueError):
            numbers = None
        for index, (offset, timestamp, value, headers) in enumerate(
            zip(offsets, timestamps, values, map(_HEADERS, records), strict=True)
        ):
            decoded = decode(value, headers, timestamp)
            if type(decoded) is Decoded:
                keep(item(offset, decoded))
            else:
                assert isinstance(decoded, Malformed)
                rejected.append((index, decoded))
        return Records(items, rejected, numbers, values)

    def _structured_plan(self, headers: tuple[object, ...]) -> tuple[str, datetime | None] | None:
        """(namespace, ingested_at, or None for the Kafka timestamp) of a structured-mode header set,
        memoised; None for binary mode or a header the general path refuses (it then says why)."""
        try:
            return self._plans[headers]
        except KeyError:
            pass
        except TypeError:  # a header value that is not hashable: not one a producer sends
            return None
        plan: tuple[str, datetime | None] | None = None
        try:
            raw = _raw_headers(headers)  # type: ignore[arg-type]
            content_type = raw.get(CONTENT_TYPE_HEADER)
            if SPECVERSION_HEADER not in raw:
                if content_type is not None and content_type != STRUCTURED_CONTENT_TYPE_BYTES:
                    _header_text(content_type, CONTENT_TYPE_HEADER)  # refused (not text) by the general path
                raw_ingested = raw.get(INGESTED_AT_HEADER)
                plan = (
                    self._namespace(raw.get(NAMESPACE_HEADER)),
                    None if raw_ingested is None else self._ingested_at(raw_ingested),
                )
        except (EventValidationError, ValueError, TypeError):
            plan = None
        if len(self._plans) >= self.MEMO_LIMIT:
            self._plans.clear()
        self._plans[headers] = plan
        return plan

    def _binary(
        self, value: bytes | None, headers: dict[str, bytes], layout: _Layout, kafka_time: datetime | None
    ) -> CloudEvent | None:
        """A binary-mode event by the compiled schema: the ce_ header values become one JSON object (no
        value with a quote or a backslash, which could end its string early, goes in: those take the
        general path), the value is the data. None: take the general path."""
        content_type = headers.get(CONTENT_TYPE_HEADER)
        if content_type is not None and content_type != JSON_CONTENT_TYPE_BYTES:
            return None
        template = self._templates.get(layout, b"")
        if template == b"":
            template = _attributes_template(layout)
            if len(self._templates) >= self.MEMO_LIMIT:
                self._templates.clear()
            self._templates[layout] = template
        if template is None:
            return None
        try:
            values = tuple([headers[name] for name, _ in layout])
            joined = b"".join(values)
        except TypeError:  # a value that is not bytes
            return None
        if b'"' in joined or b"\\" in joined:
            return None
        return event_from_binary(template % values, value, kafka_time)

    def _namespace(self, raw: bytes | None) -> str:
        if raw is None:
            return self.default_namespace
        namespace = self._namespaces.get(raw)
        if namespace is None:
            namespace = _header_text(raw, NAMESPACE_HEADER)
            if not NAMESPACE_PATTERN.fullmatch(namespace):  # `$` in .match would accept a trailing newline
                raise EventValidationError(
                    "namespace header must be 1 to 64 characters of [A-Za-z0-9_-]", field=NAMESPACE_HEADER
                )
            if len(self._namespaces) >= self.MEMO_LIMIT:
                self._namespaces.clear()
            self._namespaces[raw] = namespace
        return namespace

    def _headers(
        self, raw_headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]
    ) -> tuple[dict[str, bytes], _Layout | None]:
        """`_raw_headers` of a list or tuple, and the layout of the binary attributes when known.

        Producers send distinct lower-case names, the same few per message: then one C-level dict()
        and a memo lookup on the names replace the loop (0.6 us instead of 0.85 us for the 8 headers
        of binary mode). Anything else (a repeated name, upper case, a name that is not text) takes
        the loop, and so do the two or three headers of structured mode, for which it is as fast.
        """
        try:
            headers = dict(raw_headers)
        except (TypeError, ValueError):  # an unhashable name, a header that is not a pair: the loop says which
            return _raw_headers(raw_headers), None
        if len(headers) == len(raw_headers):
            names = tuple(headers)
            try:
                layout = self._layouts[names]
            except KeyError:
                layout = _layout(names)
                if len(self._layouts) >= self.MEMO_LIMIT:
                    self._layouts.clear()
                self._layouts[names] = layout
            if layout is not None:
                return headers, layout
        return _raw_headers(raw_headers), None

    def _timestamp(self, timestamp_ms: int) -> datetime | None:
        """timestamp_to_datetime, memoised: messages produced together share their timestamp."""
        if type(timestamp_ms) is not int:
            return timestamp_to_datetime(timestamp_ms)
        at = self._timestamps.get(timestamp_ms, EPOCH)
        if at is EPOCH:
            at = timestamp_to_datetime(timestamp_ms)
            if len(self._timestamps) >= self.MEMO_LIMIT:
                self._timestamps.clear()
            self._timestamps[timestamp_ms] = at
        return at

    def _ingested_at(self, raw: bytes) -> datetime:
        at = self._times.get(raw)
        if at is None:
            at = parse_time(_header_text(raw, INGESTED_AT_HEADER), field=INGESTED_AT_HEADER)
            if len(self._times) >= self.MEMO_LIMIT:
                self._times.clear()
            self._times[raw] = at
        return at

    def _decode(
        self, value: bytes | None, raw_headers: Sequence[tuple[str, bytes]], timestamp_ms: int
    ) -> Decoded | Malformed:
        if value is not None and len(value) > MAX_VALUE_BYTES:
            return Malformed(f"value is larger than {MAX_VALUE_BYTES} bytes")
        layout: _Layout | None = None
        if (type(raw_headers) is list or type(raw_headers) is tuple) and len(raw_headers) >= _FEW_HEADERS:
            headers, layout = self._headers(raw_headers)
        else:
            headers = _raw_headers(raw_headers) if raw_headers else {}
        namespace = self._namespace(headers.get(NAMESPACE_HEADER))
        raw_ingested = headers.get(INGESTED_AT_HEADER)
        kafka_time: datetime | None = None
        if raw_ingested is None:
            ingested_at = kafka_time = self._timestamp(timestamp_ms)
            if ingested_at is None:
                return Malformed("no ingested_at header and the Kafka timestamp is unusable")
        else:
            ingested_at = self._ingested_at(raw_ingested)

        obj: Any
        if SPECVERSION_HEADER in headers:
            if layout is not None:  # the compiled schema first, as in structured mode
                event = self._binary(value, headers, layout, kafka_time or self._timestamp(timestamp_ms))
                if event is not None:
                    return Decoded(namespace, event, ingested_at)
            obj = _binary_event(value, headers, layout)
        else:
            content_type = headers.get(CONTENT_TYPE_HEADER)
            declared = content_type is None or content_type == STRUCTURED_CONTENT_TYPE_BYTES
            if not declared:
                text = _header_text(content_type, CONTENT_TYPE_HEADER)
                declared = text.lower().startswith(STRUCTURED_CONTENT_TYPE)
            if not value:
                return Malformed("empty value")
            # The compiled schema first: an event it passes is decoded and validated in C. Anything else
            # is decoded again below and checked attribute by attribute, which names the reason.
            doc = decode_document(value)
            if doc is not None:
                event = event_from_document(doc, kafka_time or self._timestamp(timestamp_ms))
                if event is not None:
                    return Decoded(namespace, event, ingested_at)
            try:
                obj = exactjson.loads(value)
            except orjson.JSONDecodeError as exc:
                if not declared:
                    return Malformed("content-type must be application/cloudevents+json (or use binary mode)")
                return Malformed(f"value is not JSON: {exc}")
            except exactjson.InexactNumberError as exc:
                return Malformed(str(exc))
            # Without ce_specversion a message is structured whenever its value is an event object: the
            # official SDKs label structured messages with the data's content type (application/json).
            if not declared and not (isinstance(obj, dict) and "specversion" in obj):
                return Malformed("content-type must be application/cloudevents+json (or use binary mode)")

        default_time = ingested_at
        if isinstance(obj, dict) and obj.get("time") is None:
            kafka_time = kafka_time or self._timestamp(timestamp_ms)
            if kafka_time is None:
                return Malformed("event has no time and the Kafka timestamp is unusable")
            default_time = kafka_time
        event = validate_event(obj, default_time=default_time)
        return Decoded(namespace, event, ingested_at)


def decode_message(
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    timestamp_ms: int,
    default_namespace: str,
) -> Decoded | Malformed:
    """Decode one message of the events topic. Never raises."""
    return Decoder(default_namespace).decode(value, headers, timestamp_ms)


if NATIVE:
    _cevents.configure_sink(
        document=DOCUMENT_DECODE,
        data=DATA_DECODE,
        max_value_bytes=MAX_VALUE_BYTES,
        max_plan_headers=_PLAN_MAX_HEADERS,
        max_header_bytes=MAX_HEADER_BYTES,
        max_attribute_length=MAX_ATTRIBUTE_LENGTH,
        content_type_header=CONTENT_TYPE_HEADER,
        namespace_header=NAMESPACE_HEADER,
        ingested_at_header=INGESTED_AT_HEADER,
        to_millis=to_millis,
    )
