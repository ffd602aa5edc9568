"""CloudEvents 1.0 parsing and validation: pure, no I/O, no clock.

Every entry point (HTTP ingest, the Kafka structured and binary bindings) validates against one schema
(`_Attributes` and its two forms below, compiled by msgspec), so a rule holds everywhere or nowhere:
bytes that pass it at first sight become events in C (`decode_event`, `decode_events`); anything else
takes the general path (`decode_json`, `validate_event`), which decides with the same field types and
names the first field in the schema's order that is wrong. The caller passes the instant to use when
`time` is absent (the time of receipt over HTTP, the Kafka message timestamp in the sink), which keeps the
sink deterministic: the same message always builds the same row.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
import orjson

from common import exactjson
from common.clock import format_time, to_millis
from common.errors import InvalidInput
from common.records import equal_to_own_kind

SPEC_VERSION = "1.0"
MAX_ATTRIBUTE_LENGTH = 1024
# DateTime64(3, 'UTC') holds more, but usage before the epoch or past 2200 is a bug at the producer.
MIN_EVENT_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_EVENT_TIME = datetime(2200, 1, 1, tzinfo=UTC)

# RFC 3339 date-time: full date, 'T' or space, time with optional fraction, mandatory offset.
# ASCII digits only (\d also matches other scripts' digits) and no trailing newline (`$` would allow one).
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
# The subset parse_time reads with datetime.fromisoformat: no groups to build (0.2 us instead of 0.3).
_RFC3339_UTC = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:Z|\+00:00)"
).fullmatch
_fromisoformat = datetime.fromisoformat


class EventValidationError(InvalidInput):
    """One event is invalid; `index` is its position in the request (None for a single event)."""

    def __init__(self, message: str, *, field: str | None, index: int | None = None) -> None:
        super().__init__(message, field=field, index=index)
        self.field = field
        self.index = index

    def at_index(self, index: int) -> EventValidationError:
        return EventValidationError(self.message, field=self.field, index=index)

    @property
    def pointer(self) -> str:
        """Where the problem is, e.g. `[3].time`."""
        prefix = "" if self.index is None else f"[{self.index}]"
        return f"{prefix}.{self.field}" if self.field else (prefix or "$")


@equal_to_own_kind
class CloudEvent(NamedTuple):
    """A validated event. `time` is UTC with millisecond precision; `data` is canonical JSON text.

    A NamedTuple rather than a frozen dataclass: the sink builds one per Kafka message, and a frozen
    dataclass's __init__ pays an object.__setattr__ per field (0.7 us against 0.2 us). It stays
    immutable, and equality keeps the dataclass's rule: a CloudEvent equals only a CloudEvent.
    """

    id: str
    source: str
    type: str
    subject: str
    time: datetime
    data: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.id)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": format_time(self.time),
            "datacontenttype": "application/json",
            "data": orjson.loads(self.data),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_json_dict())


def truncate_to_millis(t: datetime) -> datetime:
    return t.replace(microsecond=(t.microsecond // 1000) * 1000)


def parse_time(value: object, *, field: str = "time") -> datetime:
    """Parse an RFC 3339 timestamp into an aware UTC datetime truncated to milliseconds."""
    if type(value) is str and _RFC3339_UTC(value) is not None:
        # Fast path for the forms producers send (UTC as 'Z' or '+00:00', 'T'): the regex vouched for the
        # shape, so the C parser reads the same fields (it drops fraction digits past 6, as below);
        # anything it refuses (e.g. Feb 30) or out of range takes the general path for the error.
        try:
            parsed = _fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.microsecond % 1000:
                parsed = truncate_to_millis(parsed)
            if MIN_EVENT_TIME <= parsed < MAX_EVENT_TIME:
                return parsed
    return _parse_time(value, field)


def _parse_time(value: object, field: str) -> datetime:
    if not isinstance(value, str):
        raise EventValidationError(f"{field} must be an RFC 3339 string", field=field)
    m = _RFC3339.fullmatch(value)
    if m is None:
        raise EventValidationError(
            f"{field} must be an RFC 3339 date-time with an offset, e.g. 2024-01-01T12:00:00.123Z",
            field=field,
        )
    year, month, day, hour, minute, second, frac, offset = m.groups()
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    try:
        if offset in ("Z", "z"):
            tz = UTC
        else:
            sign = 1 if offset[0] == "+" else -1
            hours, minutes = int(offset[1:3]), int(offset[4:6])
            if hours > 23 or minutes > 59:
                raise ValueError("offset out of range")
            tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
        parsed = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz)
        parsed = parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise EventValidationError(f"{field} is not a valid date-time: {exc}", field=field) from None
    if not MIN_EVENT_TIME <= parsed < MAX_EVENT_TIME:
        raise EventValidationError(
            f"{field} must be between {format_time(MIN_EVENT_TIME)} and {format_time(MAX_EVENT_TIME)}",
            field=field,
        )
    return truncate_to_millis(parsed)


# --- the schema -----------------------------------------------------------------------------------------
# One declaration of what a CloudEvent must be, compiled by msgspec: the JSON bytes of HTTP bodies and of
# structured-mode Kafka values are decoded straight into `EventDocument` (in C: types, lengths, the spec
# version and the content type are checked while parsing), the attributes of binary mode and any other
# decoded value are converted into `EventValue` (the same fields). Two rules stay in Python, because
# msgspec's constraints would cost more or decide differently:
# - an attribute must not be blank: `str.isspace` per attribute (a `Meta(pattern=r"\S")` is a regex call
#   per field from C, 0.4 us each);
# - `time` is RFC 3339 truncated to the millisecond between 1970 and 2200 (`parse_time`): msgspec's own
#   datetime parser rounds digits past the microsecond (.1239995 would become .124, not .123) and accepts
#   any number of them.
# `data` must be a JSON object or null; its numbers must be exact (common.exactjson): floats are decoded as
# Decimal and must print back as the same double (`_exact_float`), integers must fit 64 bits (orjson
# refuses to write others).

Attribute = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ATTRIBUTE_LENGTH)]
SpecVersion = Literal["1.0"]
DataContentType = Literal["application/json"]


class _Attributes(msgspec.Struct, gc=False):
    """The attributes, in the order their rules are checked (the first failing one is the one reported)."""

    id: Attribute
    source: Attribute
    specversion: SpecVersion
    type: Attribute
    subject: Attribute
    time: str | None = None  # RFC 3339: parse_time
    datacontenttype: DataContentType | None = None


class EventDocument(_Attributes, forbid_unknown_fields=True, gc=False):
    """A JSON event as sent, decoded from bytes. Anything else (extension attributes, data_base64) is not
    refused by this: it takes the general path (`validate_event`), which reads every attribute."""

    data: dict[str, Any] | None = None


class EventValue(_Attributes, gc=False):
    """A decoded JSON value (or binary-mode attributes) as an event; unknown attributes are ignored."""

    data: dict[str, Any] | None = None
    data_base64: object = msgspec.UNSET


_ATTRIBUTE_FIELDS = tuple(f for f in msgspec.structs.fields(_Attributes))
_DOCUMENT = msgspec.json.Decoder(EventDocument, float_hook=Decimal)
_DOCUMENTS = msgspec.json.Decoder(list[EventDocument], float_hook=Decimal)
_DOCUMENT_OR_LIST = msgspec.json.Decoder(EventDocument | list[EventDocument], float_hook=Decimal)
_DATA = msgspec.json.Decoder(dict[str, Any] | None, float_hook=Decimal)
DOCUMENT_DECODE = _DOCUMENT.decode  # raises msgspec.DecodeError: `decode_document` is the checked form
DATA_DECODE = _DATA.decode  # the data of binary mode (raises msgspec.DecodeError)
ATTRIBUTE_NAMES = frozenset(field.name for field in msgspec.structs.fields(_Attributes))
_convert = msgspec.convert
_SORT_KEYS = orjson.OPT_SORT_KEYS
_dumps = orjson.dumps


class _InexactFloat(TypeError):
    """A float literal of `data` that a double cannot hold exactly (orjson.dumps re-raises it as
    JSONEncodeError)."""


def _exact_float(value: object) -> float:
    """orjson's `default` for the Decimals of a decoded document: the double, when it is the literal."""
    if type(value) is Decimal:
        f = float(value)
        if Decimal(repr(f)) == value:
            return f
    raise _InexactFloat


def _event_from_document(doc: EventDocument, default_time: datetime | None) -> CloudEvent | None:
    """The event of a decoded document, or None when a rule outside the compiled schema refuses it, or it
    has no time and `default_time` is None (the caller then takes the general path, which says why).

    The reference: `event_from_document` is this function compiled (common/_cevents.c) when the extension
    was built, and must decide as this does on every input."""
    event_id, source, event_type, subject = doc.id, doc.source, doc.type, doc.subject
    if event_id.isspace() or source.isspace() or event_type.isspace() or subject.isspace():
        return None
    raw_time = doc.time
    try:
        if raw_time is not None:
            time = parse_time(raw_time)
        elif default_time is not None:
            time = _default_time(default_time)
        else:
            return None
        data = "null" if doc.data is None else _dumps(doc.data, default=_exact_float, option=_SORT_KEYS).decode()
    except (EventValidationError, orjson.JSONEncodeError):
        return None
    return CloudEvent(event_id, source, event_type, subject, time, data)


def _default_time(default_time: datetime) -> datetime:
    return truncate_to_millis(default_time.astimezone(UTC))


event_from_document: Callable[[EventDocument, datetime | None], CloudEvent | None]
try:
    from common import _cevents
except ImportError:  # built without a C compiler: the reference, in Python
    _cevents = None  # type: ignore[assignment]
    event_from_document = _event_from_document
else:
    _cevents.configure(
        cloud_event=CloudEvent,
        parse_time=parse_time,
        default_time=_default_time,
        dumps=_dumps,
        exact_float=_exact_float,
        sort_keys=_SORT_KEYS,
        refusals=(EventValidationError, orjson.JSONEncodeError),
        min_time_ms=to_millis(MIN_EVENT_TIME),
        max_time_ms=to_millis(MAX_EVENT_TIME),
    )
    event_from_document = _cevents.event_from_document
NATIVE = _cevents is not None  # the compiled decoder runs (common/_cevents.c)


def event_from_binary(attributes: bytes, value: bytes | None, default_time: datetime | None) -> CloudEvent | None:
    """Binary mode by the same schema: `attributes` is the JSON object of the ce_ headers, `value` the
    data (a JSON object, or empty for none). None: take the general path."""
    try:
        doc = _DOCUMENT.decode(attributes)
        if value:
            doc.data = _DATA.decode(value)
    except (msgspec.DecodeError, RecursionError):
        return None
    return event_from_document(doc, default_time)


def decode_document(raw: bytes) -> EventDocument | None:
    """One JSON event decoded by the compiled schema, None when it does not pass (then decode the value
    with `decode_json` and `validate_event` it: that decides, and names the reason)."""
    try:
        return _DOCUMENT.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None


def decode_event(raw: bytes, *, default_time: datetime) -> CloudEvent | None:
    """`decode_document` and `event_from_document` in one: the event, or None for the general path."""
    doc = decode_document(raw)
    return None if doc is None else event_from_document(doc, default_time)


def decode_events(body: bytes, *, default_time: datetime, single: bool | None) -> list[CloudEvent] | None:
    """The events of a request body by the compiled schema: one event (`single`), a JSON array of them
    (`single=False`) or either (None). None when any of it does not pass at first sight: then the body
    takes the general path (`decode_json`, `validate_batch`), which decides and names the event and
    field."""
    try:
        if single:
            docs: EventDocument | list[EventDocument] = _DOCUMENT.decode(body)
        elif single is None:
            docs = _DOCUMENT_OR_LIST.decode(body)
        else:
            docs = _DOCUMENTS.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    if type(docs) is not list:
        docs = [docs]  # type: ignore[list-item]
    events: list[CloudEvent] = []
    keep = events.append
    for doc in docs:
        event = event_from_document(doc, default_time)
        if event is None:
            return None
        keep(event)
    return events or None


def validate_event(obj: object, *, default_time: datetime) -> CloudEvent:
    """Validate one decoded JSON value as a CloudEvent. Raises EventValidationError."""
    if type(obj) is not dict:
        raise EventValidationError("an event must be a JSON object", field=None)
    try:
        value = _convert(obj, EventValue)
    except msgspec.ValidationError:
        raise _rejection(obj) from None
    event_id, source, event_type, subject = value.id, value.source, value.type, value.subject
    if event_id.isspace() or source.isspace() or event_type.isspace() or subject.isspace():
        raise _rejection(obj)
    raw_time = value.time
    time = truncate_to_millis(default_time.astimezone(UTC)) if raw_time is None else parse_time(raw_time)
    data = value.data
    if value.data_base64 is not msgspec.UNSET:
        data = _data_from_base64(obj)
    return CloudEvent(event_id, source, event_type, subject, time, canonical_data(data))


_RULES = {
    "specversion": f'specversion must be "{SPEC_VERSION}"',
    "time": "time must be an RFC 3339 string",
    "datacontenttype": "datacontenttype must be application/json",
}


def _rejection(obj: dict[str, Any]) -> EventValidationError:
    """Why the schema refuses `obj`: its attributes checked one by one in the schema's order, each
    against its own field type, with a message saying what to send."""
    for field in _ATTRIBUTE_FIELDS:
        name = field.name
        value = obj.get(name)
        if value is None:
            if field.required:
                return EventValidationError(f"{name} is required", field=name)
            continue
        try:
            checked = _convert(value, field.type)
        except msgspec.ValidationError:
            return EventValidationError(_RULES.get(name) or _attribute_rule(name, value), field=name)
        if name == "time":
            try:
                parse_time(checked)
            except EventValidationError as exc:
                return exc
        elif type(checked) is str and checked.isspace():
            return EventValidationError(f"{name} must not be empty", field=name)
    # the attributes pass: data (or data_base64) is what the schema refused
    data = obj.get("data")
    if "data_base64" in obj:
        try:
            data = _data_from_base64(obj)
        except EventValidationError as exc:
            return exc
    if data is not None and not isinstance(data, dict):
        return EventValidationError("data must be a JSON object or null", field="data")
    return EventValidationError("data must be a JSON object or null, with string keys", field="data")


def _attribute_rule(name: str, value: object) -> str:
    if not isinstance(value, str):
        return f"{name} must be a string, not {type(value).__name__}"
    if not value:
        return f"{name} must not be empty"
    return f"{name} is longer than {MAX_ATTRIBUTE_LENGTH} characters"


def _data_from_base64(obj: dict[str, Any]) -> Any:
    """`data_base64` (what SDKs send for bytes data) holding a JSON object is that object; anything else is
    refused with a reason saying what to send, never stored as something else."""
    if obj.get("data") is not None:
        raise EventValidationError("an event carries data or data_base64, not both", field="data_base64")
    raw = obj["data_base64"]
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise EventValidationError("data_base64 must be a base64 string", field="data_base64")
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (ValueError, binascii.Error):
        raise EventValidationError("data_base64 is not valid base64", field="data_base64") from None
    try:
        data = exactjson.loads(decoded)
    except (orjson.JSONDecodeError, exactjson.InexactNumberError):
        raise EventValidationError(
            "data_base64 does not hold JSON: send the usage as JSON data (a JSON object in data)", field="data_base64"
        ) from None
    if data is not None and not isinstance(data, dict):
        raise EventValidationError("data_base64 must hold a JSON object", field="data_base64")
    return data


def canonical_data(data: dict[str, Any] | None) -> str:
    """JSON text with sorted keys, so equal payloads compare equal as strings."""
    if data is None:
        return "null"
    try:
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError as exc:  # nested deeper than 254 levels, or an integer past 64 bits
        raise EventValidationError(f"data cannot be stored: {exc}", field="data") from None


def decode_json(body: bytes) -> Any:
    """Decode a JSON document; non-UTF-8, malformed input and numbers it would round raise InvalidInput."""
    try:
        return exactjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    except exactjson.InexactNumberError as exc:
        raise InvalidInput(str(exc), number=exc.text) from None


def validate_batch(values: list[Any], *, default_time: datetime) -> list[CloudEvent]:
    """Validate a batch as a whole: the first bad event rejects it, naming its index."""
    events: list[CloudEvent] = []
    for index, value in enumerate(values):
        try:
            events.append(validate_event(value, default_time=default_time))
        except EventValidationError as exc:
            raise exc.at_index(index) from None
    return events
