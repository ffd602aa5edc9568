"""The compiled decoder (common/_cevents.c) decides as its Python reference on every input: the time readers,
`event_from_document`, and the sink's per-batch loop (`Decoder.decode_records` against `_decode_records`
and, message by message, the hand-written decoder it all replaced). Generated and hostile input: the
strategies of test_decoder_oracle, in batches, with aiokafka's own record type."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from common import cloudevents
from common.cloudevents import EventValidationError, decode_document, parse_time
from ingest.sink.consumer import batch_from_records
from ingest.sink.decode import Decoded, Decoder, timestamp_to_datetime
from ingest.sink.dedupe import Item
from ingest.sink.digest import message_digest
from ingest.sink.prepare import Preparer
from tests.support import legacy_decoder as legacy
from tests.unit.test_decoder_oracle import (
    GOOD_BINARY,
    TIMES,
    documents,
    json_values,
    kafka_messages,
    plain,
    sink_outcome,
    times,
)

if os.environ.get("REQUIRE_COMPILED_DECODER"):  # scripts/test.sh: an install that fell back to Python fails
    from common import _cevents
else:
    _cevents = pytest.importorskip("common._cevents", reason="the C extension was not built (no compiler)")

SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RECEIVED = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def test_the_compiled_decoder_is_the_one_running() -> None:
    assert cloudevents.NATIVE
    assert cloudevents.event_from_document is _cevents.event_from_document


# --- the time readers -------------------------------------------------------------------------------------


def parsed(text: object) -> object:
    try:
        return parse_time(text)
    except EventValidationError:
        return "refused"


@SETTINGS
@given(
    st.one_of(st.sampled_from(TIMES), times, st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{8,20}(Z|\+00:00)\Z"))
)
@example("2024-02-29T23:59:59.999999999Z")
@example("2023-02-29T00:00:00Z")
@example("1970-01-01T00:00:00+00:00")
@example("2199-12-31T23:59:59.9999Z")
@example("2026-03-01T00:00:00.Z")
@example("2026-03-01T00:00:00.1234567890Z")
def test_the_fast_time_reader_agrees_with_parse_time_or_leaves_it(text: object) -> None:
    fast = _cevents.fast_time(text)
    if fast is not None:
        reference = parsed(text)
        assert fast == reference
        assert isinstance(reference, datetime)
        assert fast.tzinfo is reference.tzinfo


def test_the_fast_time_reader_takes_the_usual_forms() -> None:
    for text in ["2026-03-01T00:00:00Z", "2026-03-01T00:00:00.037Z", "2026-03-01T00:00:00.1239995+00:00"]:
        assert _cevents.fast_time(text) == parse_time(text)


@SETTINGS
@given(st.one_of(st.integers(-(2**70), 2**70), st.integers(0, 7_258_118_400_000 + 5)))
@example(0)
@example(-1)
@example(7_258_118_400_000 - 1)
@example(7_258_118_400_000)
@example(951_782_400_000)  # 2000-02-29
def test_kafka_times_agree_with_timestamp_to_datetime(timestamp: int) -> None:
    fast = _cevents.kafka_time(timestamp)
    reference = timestamp_to_datetime(timestamp)  # never raises: a timestamp past 2200 is unusable, not an error
    assert fast == reference
    if fast is not None:
        assert fast.tzinfo is UTC


DOC = b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","data":%s}'


# --- one document -----------------------------------------------------------------------------------------


@SETTINGS
@given(documents(), st.sampled_from([RECEIVED, None, datetime(2026, 1, 1, 5, tzinfo=UTC)]))
@example(b'{"specversion":"1.0","id":"\\u2003","source":"s","type":"t","subject":"x"}', RECEIVED)
@example(b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","data":{"n":0.1}}', None)
@example(b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","data":{"n":1e400}}', None)
@example(
    b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","data":{"n":18446744073709551616}}', None
)
def test_event_from_document_agrees_with_the_python_reference(raw: bytes, default_time: datetime | None) -> None:
    doc = decode_document(raw)
    if doc is None:
        return
    compiled = _cevents.event_from_document(doc, default_time)
    reference = cloudevents._event_from_document(doc, default_time)
    assert compiled == reference
    if compiled is not None:
        assert type(compiled) is cloudevents.CloudEvent
        assert compiled.time.tzinfo is reference.time.tzinfo  # type: ignore[union-attr]


# --- batches of Kafka records -----------------------------------------------------------------------------


def record(offset: int, message: tuple[bytes | None, Any, int]) -> ConsumerRecord[bytes, bytes]:
    value, headers, timestamp = message
    return ConsumerRecord("events", 0, offset, timestamp, 0, None, value, None, -1, -1, headers)


@st.composite
def batches(draw: st.DrawFn) -> list[ConsumerRecord[bytes, bytes]]:
    """Records as aiokafka builds them (headers a tuple), some sharing a header set and a timestamp (the
    memo and the time cache at work), a few with headers as a list."""
    messages = draw(st.lists(kafka_messages(), min_size=1, max_size=12))
    out = []
    for offset, (value, headers, timestamp) in enumerate(messages):
        shape = draw(st.integers(0, 9))
        as_given: Any = list(headers) if shape == 0 else tuple(headers)
        out.append(record(100 + offset, (value, as_given, timestamp)))
    return out


def outcomes(decoded: Any) -> tuple[Any, ...]:
    return (
        [(item.offset, sink_outcome(item.decoded)) for item in decoded.items],
        [(index, refused) for index, refused in decoded.rejected],
        decoded.numbers,
        decoded.values,
    )


STRUCTURED = (("content-type", b"application/cloudevents+json"), ("namespace", b"acme"))
BLANK_ID = b'{"specversion":"1.0","id":"\\u2003","source":"s","type":"t","subject":"x"}'


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
@example([record(1, (BLANK_ID, STRUCTURED, 1_767_225_600_000)), record(2, (BLANK_ID, STRUCTURED, -1))])
def test_decode_records_agrees_with_the_python_loop_and_the_old_decoder(records: list[Any]) -> None:
    compiled = Decoder("default").decode_records(records, Item)
    reference = Decoder("default")._decode_records(records, Item)
    assert outcomes(compiled) == outcomes(reference)
    assert [type(item) for item in compiled.items] == [Item] * len(compiled.items)
    assert all(type(item.decoded) is Decoded for item in compiled.items)
    # and message by message, the hand-written decoder the compiled schema replaced
    kept = {item.offset: item.decoded for item in compiled.items}
    refused = {records[index].offset: malformed for index, malformed in compiled.rejected}
    for rec in records:
        old = legacy.Decoder("default").decode(rec.value, list(rec.headers), rec.timestamp)
        assert sink_outcome(kept.get(rec.offset) or refused[rec.offset]) == sink_outcome(old)


def test_the_batch_of_a_usual_stream_is_the_same_either_way() -> None:
    """A batch like a producer's: one header set, one timestamp for many messages, every event valid."""
    headers = STRUCTURED
    records = [
        record(
            offset,
            (
                orjson.dumps(
                    {
                        "specversion": "1.0",
                        "id": f"e-{offset}",
                        "source": "svc",
                        "type": "llm",
                        "subject": f"c-{offset % 3}",
                        "time": f"2026-03-01T00:00:{offset % 60:02d}.{offset:03d}Z",
                        "data": {"tokens": offset, "model": "m"},
                    }
                ),
                headers,
                1_767_225_600_000 + offset // 4,
            ),
        )
        for offset in range(200)
    ]
    compiled = Decoder("default").decode_records(records, Item)
    assert outcomes(compiled) == outcomes(Decoder("default")._decode_records(records, Item))
    assert len(compiled.items) == 200
    assert not compiled.rejected
    batch, letters = batch_from_records("events", 0, None, records, "default")  # type: ignore[arg-type]
    assert not letters
    assert batch.items == compiled.items
    assert batch.digest == message_digest(
        [rec.offset for rec in records], [rec.timestamp for rec in records], [rec.value for rec in records]
    )


def test_a_record_without_the_fields_of_a_record_is_an_error_not_a_decision() -> None:
    with pytest.raises(AttributeError):
        Decoder("default").decode_records([object()], Item)


BINARY = tuple(GOOD_BINARY)


def replaced(name: str, raw: bytes | None) -> tuple[tuple[str, bytes], ...]:
    """BINARY with one header's value replaced (None: removed)."""
    return tuple((n, raw if n == name else v) for n, v in BINARY if n != name or raw is not None)


HOSTILE_BINARY = [
    BINARY,
    (("ce_id", b"first"), *BINARY),  # a repeated name: the first wins
    (*BINARY, ("ce_id", b"second")),
    (*BINARY, ("CE_ID", b"upper")),
    (*BINARY, ("ce_traceparent", b"00-1")),  # an extension attribute
    (*BINARY, ("ce_", b"x")),
    (*BINARY, ("ingested_at", b"2026-01-05T00:00:00.5Z")),
    (*BINARY, ("ingested_at", b"not a time")),
    (*BINARY, ("ce_datacontenttype", b"application/json")),
    (*BINARY, ("ce_datacontenttype", b"text/plain")),
    (*BINARY, ("ce_data", b"{}")),
    replaced("ce_id", b'quo"te'),
    replaced("ce_id", b"back\\slash"),
    replaced("ce_id", b"tab\there"),
    replaced("ce_id", b"\x7f"),
    replaced("ce_id", b""),
    replaced("ce_id", b" "),
    replaced("ce_id", "\u2003".encode()),
    replaced("ce_id", b"a" * 1024),
    replaced("ce_id", b"a" * 1025),
    replaced("ce_id", "é".encode() * 1024),
    replaced("ce_id", "é".encode() * 1025),
    replaced("ce_id", b"a" * 4097),
    replaced("ce_id", b"\xff\xfe"),
    replaced("ce_id", b"\xed\xa0\x80"),
    replaced("ce_id", None),
    replaced("ce_specversion", b"0.3"),
    replaced("ce_specversion", b"1.0 "),
    replaced("ce_time", None),
    replaced("ce_time", b"2026-02-30T00:00:00Z"),
    replaced("ce_time", b"2026-02-03T04:05:06+01:00"),
    replaced("ce_time", b"1969-12-31T23:59:59Z"),
    replaced("content-type", None),
    replaced("content-type", b"application/json; charset=utf-8"),
    replaced("content-type", b"text/plain"),
    replaced("namespace", None),
    replaced("namespace", b"bad namespace!"),
    replaced("namespace", b"\xff"),
    (*BINARY[:2], ("ce_source", bytearray(b"svc")), *BINARY[3:]),  # type: ignore[list-item]
    (*BINARY[:2], ("ce_source", None), *BINARY[3:]),  # type: ignore[list-item]
    (*BINARY[:2], ("ce_source",), *BINARY[3:]),  # type: ignore[list-item]
    (*BINARY[:2], [b"ce_source", b"svc"], *BINARY[3:]),  # type: ignore[list-item]
]
VALUES = [None, b"", b"null", b'{"tokens": 10}', b'{"n": 0.1}', b'{"n": 1e400}', b"[1]", b"{", b"\xff", b" {} "]


@pytest.mark.parametrize("headers", HOSTILE_BINARY)
def test_binary_mode_headers_are_decided_as_the_python_decoder_does(headers: tuple[Any, ...]) -> None:
    records = [
        record(offset, (value, headers, timestamp))
        for offset, (value, timestamp) in enumerate(
            [(value, timestamp) for value in VALUES for timestamp in (1_767_225_600_123, -1, 2**70)]
        )
    ]
    compiled = Decoder("default").decode_records(records, Item)
    assert outcomes(compiled) == outcomes(Decoder("default")._decode_records(records, Item))
    kept = {item.offset: item.decoded for item in compiled.items}
    refused = {records[index].offset: malformed for index, malformed in compiled.rejected}
    for rec in records:
        if rec.timestamp == 2**70:  # the old decoder raised OverflowError on it (a reason of its own)
            continue
        try:
            old = legacy.Decoder("default").decode(rec.value, list(rec.headers), rec.timestamp)
        except Exception:  # noqa: BLE001 - the legacy decoder takes only pairs; the new one must not raise either
            continue
        assert sink_outcome(kept.get(rec.offset) or refused[rec.offset]) == sink_outcome(old)


# --- the writer's precomputed values ------------------------------------------------------------------------

instants = st.one_of(
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2199, 12, 31), timezones=st.just(UTC)),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2199, 12, 30), timezones=st.timezones()),
    st.integers(0, 7_258_118_399_999).map(lambda ms: datetime.fromtimestamp(ms / 1000, UTC)),
)
words = st.one_of(st.sampled_from(["acme", "svc", "llm", "c-1", "é", "\x00", "😀"]), st.text(max_size=6))


@st.composite
def prepared_items(draw: st.DrawFn) -> list[Item]:
    out = []
    for offset in sorted(draw(st.sets(st.integers(0, 2**62), max_size=25))):
        event = cloudevents.CloudEvent(
            draw(words), draw(words), draw(words), draw(words), draw(instants), draw(st.sampled_from(DATAS))
        )
        out.append(Item(offset, Decoded(draw(st.sampled_from(["acme", "b"])), event, draw(instants))))
    return out


DATAS = ["null", '{"tokens":5}', '{"model":"é","n":1.5}', "{}"]


def prepared_fields(prepared: Any) -> tuple[Any, ...]:
    return (
        prepared.key_hashes.tolist(),
        prepared.payload_hashes.tolist(),
        prepared.offsets.tolist(),
        prepared.columns,
        prepared.groups,
    )


@SETTINGS
@given(prepared_items())
def test_prepare_agrees_with_the_python_reference(items: list[Item]) -> None:
    compiled, reference = Preparer(), Preparer()
    assert prepared_fields(compiled.prepare(items)) == prepared_fields(reference._prepare(items))
    # and a second batch, the reference's memos filled
    assert prepared_fields(compiled.prepare(items[::-1])) == prepared_fields(reference._prepare(items[::-1]))


def test_prepare_refuses_text_utf_8_cannot_hold_as_python_does() -> None:
    event = cloudevents.CloudEvent("\ud800", "s", "t", "x", RECEIVED, "null")
    items = [Item(1, Decoded("acme", event, RECEIVED))]
    with pytest.raises(UnicodeEncodeError):
        Preparer()._prepare(items)
    with pytest.raises(UnicodeEncodeError):
        Preparer().prepare(items)


# --- plain JSON read without the schema's objects -----------------------------------------------------------

DATA_TEXTS = [
    b"null",
    b"{}",
    b'{"a":1,"b":2}',
    b'{"b":2,"a":1}',
    b'{"a":1,"a":2}',
    b'{"a": 1}',
    b' {"a":1} ',
    b'{"a":-0}',
    b'{"a":0}',
    b'{"a":-1}',
    b'{"a":123456789012345678}',
    b'{"a":1234567890123456789}',
    b'{"a":18446744073709551616}',
    b'{"a":1.5}',
    b'{"a":0.1}',
    b'{"a":1e2}',
    b'{"a":01}',
    b'{"a":"\\u00e9"}',
    '{"a":"é"}'.encode(),
    '{"z":1,"é":2}'.encode(),
    '{"é":1,"z":2}'.encode(),
    '{"\uffff":1,"😀":2}'.encode(),
    '{"😀":1,"\uffff":2}'.encode(),
    b'{"a":[1,{"b":null,"a":true}]}',
    b'{"a":[1,{"a":true,"b":null}]}',
    b'{"a":[],"b":{},"c":[[]]}',
    b'{"a":true,"b":false,"c":null,"d":"x"}',
    b'{"a":' * 40 + b"1" + b"}" * 40,
    b'{"a":' * 20 + b"1" + b"}" * 20,
    b'{"a":"x\x01"}',
    b'{"a":"\xff"}',
    b'{"a":"\xed\xa0\x80"}',
    b'{"a":1,}',
    b'{"a":1}x',
    b'{"a":1}{"b":2}',
    b'{"a":1} ',
    b'{"b":1,"a":[2,{"d":1,"c":0}]}',
    b'{"a":1',
    b'{"a":tru}',
    b'{"a":nul}',
    b'{"ab":1,"a":2}',
    b'{"a":1,"ab":2}',
    b"[1]",
    b'"x"',
]
ENVELOPES = [
    b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","time":"2026-03-01T00:00:00.5Z","data":%s}',
    b'{ "data" : %s , "subject" : "x", "type":"t","source":"s","id":"a","specversion":"1.0" }',
    b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","time":null,"datacontenttype":null,'
    b'"data":%s}',
    b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","datacontenttype":"application/json",'
    b'"data":%s}',
    b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","datacontenttype":"text/plain","data":%s}',
    b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","ext":"e","data":%s}',
    b'{"specversion":"1.0","id":"a","id":"b","source":"s","type":"t","subject":"x","data":%s}',
    b'{"specversion":"1.0","id":"\\u0061","source":"s","type":"t","subject":"x","data":%s}',
    b'{"specversion":"\\u0031.0","id":"a","source":"s","type":"t","subject":"x","data":%s}',
    b'{"specversion":"0.3","id":"a","source":"s","type":"t","subject":"x","data":%s}',
    b'{"specversion":"1.00","id":"a","source":"s","type":"t","subject":"x","data":%s}',
    b'{"specversion":"1.","id":"a","source":"s","type":"t","subject":"x","data":%s}',
    b'{"specversion":"1.0","id":"","source":"s","type":"t","subject":"x","data":%s}',
    b'{"specversion":"1.0","id":" ","source":"s","type":"t","subject":"x","data":%s}',
    b'{"specversion":"1.0","id":null,"source":"s","type":"t","subject":"x","data":%s}',
    b'{"specversion":"1.0","id":5,"source":"s","type":"t","subject":"x","data":%s}',
    b'{"specversion":"1.0","source":"s","type":"t","subject":"x","data":%s}',
    b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","time":"","data":%s}',
    b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","time":"2026-02-30T00:00:00Z","data":%s}',
    b'{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","data":%s} x',
    b'\xef\xbb\xbf{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"x","data":%s}',
    b'{"specversion":"1.0","id":"' + b"a" * 1025 + b'","source":"s","type":"t","subject":"x","data":%s}',
    b'{"specversion":"1.0","id":"' + "é".encode() * 1024 + b'","source":"s","type":"t","subject":"x","data":%s}',
]


@pytest.mark.parametrize("envelope", ENVELOPES)
def test_plain_documents_are_decided_as_the_schema_does(envelope: bytes) -> None:
    structured = (("content-type", b"application/cloudevents+json"),)
    records = [record(i, (envelope % data, structured, 1_767_225_600_123)) for i, data in enumerate(DATA_TEXTS)]
    compiled = Decoder("default").decode_records(records, Item)
    assert outcomes(compiled) == outcomes(Decoder("default")._decode_records(records, Item))


def test_binary_mode_data_is_decided_as_the_schema_does() -> None:
    records = [record(i, (data, BINARY, 1_767_225_600_123)) for i, data in enumerate(DATA_TEXTS)]
    compiled = Decoder("default").decode_records(records, Item)
    assert outcomes(compiled) == outcomes(Decoder("default")._decode_records(records, Item))
    assert len(compiled.items) >= 15  # the canonical ones and those the schema reads again


@st.composite
def data_bytes(draw: st.DrawFn) -> bytes:
    """A data object as producers write it: compact in map order, sorted, or with json.dumps' spaces."""
    data = draw(
        st.dictionaries(
            st.one_of(st.sampled_from(["a", "b", "ab", "é", "😀", "\uffff"]), st.text(max_size=3)),
            json_values,
            max_size=6,
        )
    )
    try:
        how = draw(st.integers(0, 2))
        if how == 2:
            return json.dumps(plain(data), ensure_ascii=draw(st.booleans())).encode()
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS if how else 0)
    except (TypeError, ValueError, orjson.JSONEncodeError):
        return b'{"unencodable":true}'


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(data_bytes(), min_size=1, max_size=8))
def test_data_as_producers_write_it_is_stored_as_the_schema_does(datas: list[bytes]) -> None:
    structured = (("content-type", b"application/cloudevents+json"),)
    records = [record(i, (ENVELOPES[0] % data, structured, 1_767_225_600_123)) for i, data in enumerate(datas)]
    records += [record(100 + i, (data, BINARY, 1_767_225_600_123)) for i, data in enumerate(datas)]
    compiled = Decoder("default").decode_records(records, Item)
    assert outcomes(compiled) == outcomes(Decoder("default")._decode_records(records, Item))
