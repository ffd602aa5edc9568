"""The compiled CloudEvent schema (common.cloudevents, msgspec) decides like the hand-written validation it
replaced (tests/support/legacy_decoder.py, kept verbatim as the oracle): the same event, or a rejection
naming the same field, for every entry point (a decoded value, the bytes of one event, an HTTP body, a
Kafka message in either binding) on generated and hostile input: wrong types, blank and huge strings,
nested junk, non-UTF-8 bytes, times far in the future or before 1970, numbers a float cannot hold,
extension attributes, data_base64, truncated and corrupted documents."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from common.cloudevents import EventValidationError, decode_event, decode_json, validate_event
from common.errors import InvalidInput
from ingest.http import BATCH, JSON, SINGLE, events_from_body
from ingest.sink.decode import Decoded, Decoder, Malformed
from tests.support import legacy_decoder as legacy

RECEIVED = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
TS = 1_767_225_600_123
SETTINGS = settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- outcomes: what must agree ----------------------------------------------------------------------------


def outcome(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """("ok", fields of the event(s)) or ("invalid", field, index); the messages may differ."""
    try:
        result = fn(*args, **kwargs)
    except (EventValidationError, legacy.EventValidationError) as exc:
        return ("invalid", exc.field, exc.index)
    except InvalidInput as exc:
        return ("invalid", exc.fields.get("field"), exc.fields.get("index"))
    if isinstance(result, list):
        return ("ok", [tuple(e) for e in result])
    return ("ok", tuple(result))


# Reasons of the sink: "<field>: <message>" where a field is named, the message alone otherwise.
NAMED = {"id", "source", "specversion", "type", "subject", "time", "datacontenttype", "data", "data_base64"}


def sink_outcome(decoded: object) -> tuple[Any, ...]:
    if isinstance(decoded, Malformed | legacy.Malformed):
        prefix, _, _ = decoded.reason.partition(": ")
        if prefix in NAMED or prefix.startswith(("ce_", "namespace", "ingested_at", "content-type")):
            return ("malformed", prefix)
        return ("malformed", decoded.reason)  # no field: the decoder's own words, unchanged
    assert isinstance(decoded, Decoded | legacy.Decoded)
    return ("ok", decoded.namespace, tuple(decoded.event), decoded.ingested_at)


# --- generated input --------------------------------------------------------------------------------------

texts = st.one_of(
    st.sampled_from(
        ["", " ", "\u2003", "\x1c", "\u00a0x", "x", " x ", "a" * 1024, "a" * 1025, "é" * 1024, "😀" * 1025]
    ),
    st.sampled_from(["1.0", "1.0 ", "application/json", "application/JSON", "text/plain"]),
    st.text(max_size=8),
)
NUMBER_LITERALS = [
    "0",
    "-0",
    "-0.0",
    "1.5",
    "1E2",
    "0.1",
    "1e400",
    "-1e400",
    "1e-400",
    "12345678901234567",
    "9223372036854775807",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "100000000000000000000000001",
    "0.12345678901234567891",
    "0.000000000000001",
    "1234567.123456789",
    "2.0000000000000000001",
]
numbers = st.one_of(
    st.sampled_from(NUMBER_LITERALS).map(lambda t: orjson.Fragment(t.encode())),
    st.integers().map(lambda i: orjson.Fragment(str(i).encode())),
    st.floats(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: orjson.Fragment(str(d).encode())),
)
scalars = st.one_of(st.none(), st.booleans(), texts, numbers)
json_values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(texts, c, max_size=3), max_leaves=8
)
values = st.one_of(scalars, st.lists(scalars, max_size=2), st.dictionaries(texts, scalars, max_size=2))
TIMES = [
    "2026-03-01T00:00:00Z",
    "2026-03-01T00:00:00.037Z",
    "2026-03-01T00:00:00.0371234Z",
    "2026-03-01T00:00:00.1239995Z",
    "2026-03-01T00:00:00.999999999Z",
    "2026-03-01T00:00:00.1234567890Z",
    "2026-03-01t00:00:00z",
    "2026-03-01 00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-03-01T24:00:00Z",
    "2026-03-01T00:00:60Z",
    "1969-12-31T23:59:59.999Z",
    "1970-01-01T00:30:00+01:00",
    "0001-01-01T00:00:00Z",
    "2200-01-01T00:00:00Z",
    "2199-12-31T23:59:59.9999Z",
    "9999-12-31T23:59:59Z",
    "2026-03-01T00:00:00+01:30",
    "2026-03-01T00:00:00+24:00",
    "2026-03-01T00:00:00+05:60",
    "2026-03-01T00:00:00+0500",
    "2026-03-01T00:00:00",
    "2026-03-01",
    "20260301T000000Z",
    "2026-W09-1T00:00:00Z",
    "2026-03-01T00:00:00,5Z",
    "2026-03-01T00:00:00.Z",
    "2026-03-01T00:00:00Z\n",
    "२०२६-03-01T00:00:00Z",
    "2026-03-01T00:00:00-00:00",
]
good_times = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2199, 1, 1)).map(
    lambda d: d.isoformat() + "Z"
)
times = st.one_of(
    st.sampled_from(TIMES),
    st.datetimes(min_value=datetime(1960, 1, 1), max_value=datetime(2250, 1, 1)).map(lambda d: d.isoformat() + "Z"),
    values,
)
datas = st.one_of(st.none(), st.dictionaries(texts, json_values, max_size=4), json_values)
B64 = [base64.b64encode(b'{"tokens": 5}').decode(), "aGVsbG8=", "%%%", base64.b64encode(b"[1]").decode(), "", None, 5]
DELETE = object()


@st.composite
def event_objects(draw: st.DrawFn) -> object:
    """A valid event with up to three attributes replaced by hostile values, removed or added."""
    obj: dict[str, Any] = {
        "specversion": "1.0",
        "id": draw(st.sampled_from(["e-1", "e-2"])),
        "source": "svc",
        "type": "t",
        "subject": "c",
        "time": draw(st.sampled_from([*TIMES[:4], None]) | good_times),
        "data": draw(st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.integers(-9, 9), max_size=2), datas)),
    }
    if draw(st.booleans()):
        obj["datacontenttype"] = draw(st.sampled_from(["application/json", None]))
    names = ["specversion", "id", "source", "type", "subject", "time", "data", "datacontenttype"]
    changes = draw(st.lists(st.sampled_from([*names, "data_base64", "traceparent", "extra"]), max_size=3))
    for name in changes if draw(st.integers(0, 2)) else []:  # a third of them as generated: mostly valid
        if name == "data_base64":
            obj[name] = draw(st.sampled_from(B64))
            if draw(st.booleans()):
                obj["data"] = None
            continue
        value = draw(st.one_of(st.just(DELETE), texts, values, datas, times))
        if value is DELETE:
            obj.pop(name, None)
        else:
            obj[name] = value
    return obj if draw(st.integers(0, 15)) else draw(values)


def plain(value: object) -> object:
    """The value a JSON decoder returns for a generated one (Fragments are number literals)."""
    return orjson.loads(orjson.dumps(value))


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """The JSON of a generated event, sometimes corrupted: cut, a byte changed or inserted, padded."""
    raw = orjson.dumps(draw(event_objects()))
    how = draw(st.integers(0, 15))
    if how == 15 and raw:
        raw = raw[: len(raw) - 1 - draw(st.integers(0, len(raw) - 1))]
    elif how == 14 and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + draw(st.binary(min_size=1, max_size=2)) + raw[i + 1 :]
    elif how == 13:
        i = draw(st.integers(0, len(raw)))
        raw = (
            raw[:i]
            + draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc3\x28", b" ", b"\x00", b"\xef\xbb\xbf"]))
            + raw[i:]
        )
    elif how == 12:
        raw = draw(st.sampled_from([b" ", b"\n", b"\t\r"])) + raw + draw(st.sampled_from([b"", b" ", b"x", b"\x00"]))
    return raw


# --- the entry points -------------------------------------------------------------------------------------


@SETTINGS
@given(event_objects())
def test_a_decoded_value_is_validated_like_before(obj: object) -> None:
    try:
        value = plain(obj)
    except (orjson.JSONEncodeError, orjson.JSONDecodeError):
        return  # not a value orjson hands over (an integer past 64 bits, 1e400): the bytes tests cover them
    new = outcome(validate_event, value, default_time=RECEIVED)
    old = outcome(legacy.validate_event, value, default_time=RECEIVED)
    assert new == old


def new_event_from_bytes(raw: bytes) -> object:
    event = decode_event(raw, default_time=RECEIVED)
    return event if event is not None else validate_event(decode_json(raw), default_time=RECEIVED)


def old_event_from_bytes(raw: bytes) -> object:
    return legacy.validate_event(legacy.decode_json(raw), default_time=RECEIVED)


@SETTINGS
@given(documents())
@example(b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","time":"2026-03-01T00:00:00.1239995Z"}')
@example(b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","data":{"n":18446744073709551616}}')
@example(b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","data":{"n":0.12345678901234567891}}')
@example(b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","data":{"n":1e400}}')
@example(b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","ext":100000000000000000000000001}')
@example(b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","data":{"a":"\xff"}}')
@example(b'{"specversion":"1.0","id":"\\u2003","source":"s","type":"t","subject":"x"}')
@example(b'{"specversion":"1.0","id":"\\ud800","source":"s","type":"t","subject":"x"}')
@example(b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","data":{"k":"\\udc00"}}')
@example(b'{"specversion":"1.0","id":"a","id":"","source":"s","type":"t","subject":"x"}')
@example(
    b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","data":' + b"[" * 300 + b"]" * 300 + b"}"
)
def test_the_bytes_of_one_event_are_validated_like_before(raw: bytes) -> None:
    assert outcome(new_event_from_bytes, raw) == outcome(old_event_from_bytes, raw)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from([SINGLE, BATCH, JSON]))
    if draw(st.integers(0, 3)):
        events = draw(st.lists(event_objects(), max_size=4))
        body = orjson.dumps(events if kind != SINGLE or len(events) != 1 else events[0])
    else:
        body = draw(documents())
    return kind, body


@SETTINGS
@given(bodies())
def test_http_bodies_are_validated_like_before(body: tuple[str, bytes]) -> None:
    kind, raw = body
    assert outcome(events_from_body, kind, raw, RECEIVED) == outcome(
        legacy.legacy_events_from_body, kind, raw, RECEIVED
    )


GOOD_BINARY = [
    ("ce_specversion", b"1.0"),
    ("ce_id", b"e-1"),
    ("ce_source", b"svc"),
    ("ce_type", b"llm"),
    ("ce_subject", b"cust-1"),
    ("ce_time", b"2026-02-03T04:05:06.789123Z"),
    ("content-type", b"application/json"),
    ("namespace", b"acme"),
]
HOSTILE_HEADER = st.one_of(
    st.sampled_from([b"", b" ", b"0.3", b"\xff\xfe", b"a" * 4097, b"2200-01-01T00:00:00Z", b"1969-12-31T00:00:00Z"]),
    st.sampled_from([b"application/json; charset=utf-8", b"text/plain", b"application/cloudevents+json"]),
    st.binary(max_size=8),
)


@st.composite
def kafka_messages(draw: st.DrawFn) -> tuple[bytes | None, list[tuple[str, bytes]], int]:
    timestamp = draw(st.sampled_from([TS, TS, TS, -1, 0, 7_258_118_400_000]))
    if draw(st.booleans()):  # structured
        headers: list[tuple[str, bytes]] = draw(
            st.sampled_from(
                [
                    [("content-type", b"application/cloudevents+json"), ("namespace", b"acme")],
                    [("content-type", b"application/json")],
                    [("content-type", b"text/plain"), ("ingested_at", b"2026-01-05T00:00:00.5Z")],
                    [("ingested_at", b"not a time")],
                    [("namespace", b"bad namespace!")],
                    [],
                ]
            )
        )
        value = draw(st.one_of(documents(), st.sampled_from([None, b""])))
        return value, headers, timestamp
    headers = list(GOOD_BINARY)
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(headers) - 1))
        if draw(st.booleans()):
            headers[i] = (headers[i][0], draw(HOSTILE_HEADER))
        else:
            del headers[i]
            if not headers:
                break
    value = draw(st.one_of(st.none(), documents(), st.sampled_from([b'{"tokens": 10}', b"[1]", b'{"n": 1e400}'])))
    return value, headers, timestamp


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kafka_messages())
def test_kafka_messages_are_decoded_like_before(message: tuple[bytes | None, list[tuple[str, bytes]], int]) -> None:
    value, headers, timestamp = message
    new = Decoder("default").decode(value, headers, timestamp)
    old = legacy.Decoder("default").decode(value, headers, timestamp)
    assert sink_outcome(new) == sink_outcome(old)


@pytest.mark.parametrize(
    "time",
    ["2026-03-01T00:00:00.1239995Z", "2026-03-01T00:00:00.999999999Z", "2026-03-01T00:00:00.1234567890Z"],
)
def test_times_past_the_microsecond_are_truncated_not_rounded(time: str) -> None:
    """msgspec's own datetime would round these (and accept ten digits): the schema keeps time a string."""
    raw = orjson.dumps({"specversion": "1.0", "id": "a", "source": "s", "type": "t", "subject": "x", "time": time})
    assert outcome(new_event_from_bytes, raw) == outcome(old_event_from_bytes, raw)
