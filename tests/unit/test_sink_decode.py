"""Decoding both CloudEvents Kafka bindings, including hostile input: every message ends as an event or
a reason, never an exception."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ingest.sink.decode import Decoded, Decoder, Malformed, _raw_headers, decode_message

TS = 1_767_225_600_123  # 2026-01-01T00:00:00.123Z
TS_TIME = datetime(2026, 1, 1, 0, 0, 0, 123_000, tzinfo=UTC)
STRUCTURED = [("content-type", b"application/cloudevents+json")]


def event(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "svc",
        "type": "llm",
        "subject": "cust-1",
        "time": "2026-02-03T04:05:06.789+02:00",
        "data": {"tokens": 10, "b": [1, 2]},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def binary_headers(**overrides: object) -> list[tuple[str, bytes]]:
    attrs = {k: v for k, v in event(**overrides).items() if k != "data"}
    return [(f"ce_{k}", str(v).encode()) for k, v in attrs.items()] + [("content-type", b"application/json")]


def test_structured_mode() -> None:
    out = decode_message(orjson.dumps(event()), [*STRUCTURED, ("namespace", b"acme")], TS, "default")
    assert isinstance(out, Decoded)
    assert out.namespace == "acme"
    assert out.event.id == "e-1"
    assert out.event.time == datetime(2026, 2, 3, 2, 5, 6, 789_000, tzinfo=UTC)
    assert out.event.data == '{"b":[1,2],"tokens":10}'
    assert out.ingested_at == TS_TIME  # no ingested_at header: the Kafka timestamp


def test_binary_mode_equals_structured_mode() -> None:
    structured = decode_message(orjson.dumps(event()), STRUCTURED, TS, "default")
    binary = decode_message(orjson.dumps(event()["data"]), binary_headers(), TS, "default")
    assert isinstance(binary, Decoded)
    assert binary == structured


def test_defaults_namespace_time_and_ingested_at_header() -> None:
    out = decode_message(orjson.dumps(event(time=None)), [], TS, "tenant-x")
    assert isinstance(out, Decoded)
    assert out.namespace == "tenant-x"
    assert out.event.time == TS_TIME  # no time: the Kafka message timestamp, deterministic on replay
    headers = [("ingested_at", b"2026-01-05T00:00:00.5Z")]
    out2 = decode_message(orjson.dumps(event()), headers, TS, "d")
    assert isinstance(out2, Decoded)
    assert out2.ingested_at == datetime(2026, 1, 5, 0, 0, 0, 500_000, tzinfo=UTC)


def test_binary_mode_without_data_is_null_data() -> None:
    out = decode_message(None, binary_headers(), TS, "d")
    assert isinstance(out, Decoded)
    assert out.event.data == "null"


@pytest.mark.parametrize(
    ("value", "headers", "timestamp", "reason"),
    [
        (b"{not json", [], TS, "not JSON"),
        (b"", [], TS, "empty value"),
        (None, [], TS, "empty value"),
        (b"[1,2]", [], TS, "JSON object"),
        (b'"just a string"', [], TS, "JSON object"),
        (orjson.dumps(event(id=None)), [], TS, "id"),
        (orjson.dumps(event(id="")), [], TS, "id"),
        (orjson.dumps(event(id="   ")), [], TS, "id"),
        (orjson.dumps(event(id=12)), [], TS, "id"),
        (orjson.dumps(event(source=["x"])), [], TS, "source"),
        (orjson.dumps(event(subject={"a": 1})), [], TS, "subject"),
        (orjson.dumps(event(specversion="0.3")), [], TS, "specversion"),
        (orjson.dumps(event(type="t" * 5000)), [], TS, "type"),
        (orjson.dumps(event(time="yesterday")), [], TS, "time"),
        (orjson.dumps(event(time="2026-01-01T00:00:00")), [], TS, "time"),
        (orjson.dumps(event(time="1969-12-31T23:59:59Z")), [], TS, "time"),
        (orjson.dumps(event(time="9999-01-01T00:00:00Z")), [], TS, "time"),
        (orjson.dumps(event(time=1700000000)), [], TS, "time"),
        (orjson.dumps(event(data=[1, 2])), [], TS, "data"),
        (orjson.dumps(event(data="text")), [], TS, "data"),
        (orjson.dumps(event(datacontenttype="text/xml")), [], TS, "datacontenttype"),
        (orjson.dumps(event(data_base64="AAAA")), [], TS, "data"),
        (orjson.dumps(event(time=None)), [], -1, "Kafka timestamp"),
        (b"\xff\xfe\x00garbage", [], TS, "not JSON"),
        (b"x" * (1024 * 1024 + 1), [], TS, "larger"),
        (b'{"a":1}', [("content-type", b"text/plain")], TS, "content-type"),  # not an event object
        (b'{"a":1}', [("content-type", b"application/json")], TS, "content-type"),
        (orjson.dumps(event()), [("namespace", b"\xff\xfe")], TS, "UTF-8"),
        (orjson.dumps(event()), [("namespace", b"bad namespace!")], TS, "namespace"),
        (orjson.dumps(event()), [("namespace", b"n" * 65)], TS, "namespace"),
        (orjson.dumps(event()), [("namespace", b"acme\n")], TS, "namespace"),  # `$` matched before a newline
        (orjson.dumps(event()), [("namespace", b"x" * 5000)], TS, "longer"),
        (orjson.dumps(event()), [("ingested_at", b"not a time")], TS, "ingested_at"),
        (orjson.dumps(event()), [("ingested_at", 12345)], TS, "bytes"),  # type: ignore[list-item]
        (b'{"a":1}', binary_headers(id=None), TS, "id"),
        (b'{"a":1}', [*binary_headers()[:-1], ("content-type", b"text/plain")], TS, "content-type"),
        (b'{"a":1}', [*binary_headers()[:-1], ("content-type", b"application/jsonx")], TS, "content-type"),
        (b"\x00\x01", binary_headers(), TS, "not JSON"),
        (b"[1]", binary_headers(), TS, "data"),
        (b'{"a":1}', [("ce_specversion", b"1.0"), ("ce_id", b"\xc3\x28")], TS, "UTF-8"),
        (orjson.dumps(event()), [("ce_specversion", b"0.3")], TS, "id"),
    ],
)
def test_malformed_messages_name_a_reason(
    value: bytes | None, headers: list[tuple[str, bytes]], timestamp: int, reason: str
) -> None:
    out = decode_message(value, headers, timestamp, "default")
    assert isinstance(out, Malformed), out
    assert reason.lower() in out.reason.lower(), out.reason


def test_deeply_nested_junk_is_malformed_or_decoded_never_raises() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert isinstance(decode_message(deep, [], TS, "d"), Malformed)
    nested = orjson.dumps(event(data={"a": {"b": {"c": [{"d": None}] * 50}}}))
    assert isinstance(decode_message(nested, [], TS, "d"), Decoded)


def test_first_header_of_a_name_wins_deterministically() -> None:
    headers = [("namespace", b"first"), ("NAMESPACE", b"second")]
    out = decode_message(orjson.dumps(event()), headers, TS, "d")
    assert isinstance(out, Decoded)
    assert out.namespace == "first"


@given(
    value=st.one_of(st.none(), st.binary(max_size=300)),
    headers=st.lists(
        st.tuples(
            st.sampled_from(["namespace", "ce_id", "ce_specversion", "content-type", "ingested_at", "ce_time", "x"]),
            st.binary(max_size=40),
        ),
        max_size=6,
    ),
    timestamp=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_never_raises(value: bytes | None, headers: list[tuple[str, bytes]], timestamp: int) -> None:
    out = decode_message(value, headers, timestamp, "default")
    assert isinstance(out, Decoded | Malformed)
    assert decode_message(value, headers, timestamp, "default") == out  # deterministic


def test_the_readme_producer_example_decodes_in_both_modes() -> None:
    now = "2026-03-01T12:00:00.123+00:00"  # datetime.isoformat(timespec="milliseconds") of a UTC time
    structured = {
        "specversion": "1.0",
        "id": "run-1",
        "source": "worker",
        "type": "tokens",
        "subject": "customer-1",
        "time": now,
        "data": {"tokens": 120, "model": "small"},
    }
    out = decode_message(
        orjson.dumps(structured),
        [("content-type", b"application/cloudevents+json"), ("namespace", b"default")],
        TS,
        "x",
    )
    assert isinstance(out, Decoded)
    assert out.namespace == "default"
    binary_headers_ = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"run-2"),
        ("ce_source", b"worker"),
        ("ce_type", b"tokens"),
        ("ce_subject", b"customer-1"),
        ("ce_time", now.encode()),
        ("content-type", b"application/json"),
        ("namespace", b"default"),
    ]
    out2 = decode_message(orjson.dumps({"tokens": 80, "model": "large"}), binary_headers_, TS, "x")
    assert isinstance(out2, Decoded)
    assert out2.event.time == datetime(2026, 3, 1, 12, 0, 0, 123_000, tzinfo=UTC)
    assert out2.event.data == '{"model":"large","tokens":80}'


class GeneralDecoder(Decoder):
    """The decoder without its header fast path: every message through `_raw_headers` and the
    per-header loop of `_binary_event`."""

    def _headers(
        self, raw_headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]
    ) -> tuple[dict[str, bytes], None]:
        return _raw_headers(raw_headers), None


# Two good values per name (by exact name, so a repeated or differently-cased name can be told apart).
GOOD_HEADER_VALUES: dict[str, list[bytes]] = {
    "ce_specversion": [b"1.0"],
    "ce_id": [b"e-1", b"e-2"],
    "ce_source": [b"svc", b" svc "],
    "ce_type": [b"llm", b"t\xc3\xa9"],
    "ce_subject": [b"cust-1", b"cust-2"],
    "ce_time": [b"2026-02-03T04:05:06.789123Z", b"2026-02-03T04:05:06.7+00:00"],
    "ce_datacontenttype": [b"application/json"],
    "ce_data": [b"{}"],
    "ce_data_base64": [b"AAAA"],
    "ce_": [b"x"],
    "ce_ext": [b"\xc3\xa9", b"a" * 4096],
    "content-type": [b"application/json", b"application/json; charset=utf-8"],
    "namespace": [b"acme", b"globex"],
    "ingested_at": [b"2026-01-05T00:00:00.5Z"],
    "x": [b"y"],
    "CE_ID": [b"e-upper"],
    "ce_Subject": [b"cust-mixed"],
    "Namespace": [b"upper"],
    "Content-Type": [b"text/plain"],
}
HOSTILE_HEADER_VALUES = st.one_of(
    st.sampled_from([b"", b" ", b" e-1 ", b"svc\n", b"0.3", b"\xff\xfe", b"\xc3\x28", b"a" * 4097]),
    st.sampled_from([b"application/json; charset=utf-8", b"Application/JSON"]),
    st.sampled_from([bytearray(b"1.0"), bytearray(b"\xff"), "1.0", None, 12]),
    st.binary(max_size=8),
)


@st.composite
def binary_messages(draw: st.DrawFn) -> tuple[bytes | None, list[Any], int]:
    """Mostly well-formed binary-mode messages (enough headers for the fast path), with hostile values,
    repeated names, upper case, names that are not text and headers that are not pairs mixed in."""
    names: list[object] = ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_subject"]
    names += draw(st.lists(st.sampled_from(sorted(GOOD_HEADER_VALUES)), max_size=8))
    if draw(st.integers(0, 19)) == 0:
        names.append(draw(st.sampled_from([b"namespace", 7])))
    headers: list[Any] = []
    for name in draw(st.permutations(names)):
        good = GOOD_HEADER_VALUES.get(name) if isinstance(name, str) else None
        if good is not None and draw(st.integers(0, 5)):
            headers.append((name, draw(st.sampled_from(good))))
        else:
            headers.append((name, draw(HOSTILE_HEADER_VALUES)))
    if draw(st.integers(0, 19)) == 0:
        headers.insert(draw(st.integers(0, len(headers))), ("ce_id", b"e-2", b"third"))
    value = draw(st.sampled_from([None, b"", b'{"tokens": 10}', b"[1]", b"{not json", b'{"n": 12345678901234567891}']))
    return value, headers, draw(st.sampled_from([TS, TS, TS, -1]))


@settings(max_examples=2000)
@given(binary_messages())
@example((b"{}", [("ce_specversion", b"1.0"), ("ce_id", b"a" * 4097), ("ce_source", b"s"), ("x", b"")], TS))
@example((b"{}", [("ce_specversion", b"1.0"), ("ce_id", b" e "), ("ce_source", b"s"), ("ce_type", b"t")], TS))
@example((b"{}", [("ce_specversion", b"1.0"), ("Namespace", b"up"), ("namespace", b"low"), ("ce_id", b"i")], TS))
def test_header_fast_path_decides_like_the_general_path(message: tuple[bytes | None, list[Any], int]) -> None:
    value, headers, timestamp = message
    fast, general = Decoder("default"), GeneralDecoder("default")
    expected = general.decode(value, headers, timestamp)
    assert fast.decode(value, headers, timestamp) == expected
    assert fast.decode(value, tuple(headers), timestamp) == expected  # a tuple of headers, and a memo hit
    assert fast.decode(value, headers, timestamp) == expected


def test_header_fast_path_reads_the_readme_binary_example() -> None:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"run-2"),
        ("ce_source", b"worker"),
        ("ce_type", b"tokens"),
        ("ce_subject", b"customer-1"),
        ("ce_time", b"2026-03-01T12:00:00.123+00:00"),
        ("content-type", b"application/json"),
        ("namespace", b"default"),
    ]
    decoder = Decoder("x")
    out = decoder.decode(b'{"tokens": 80}', headers, TS)
    assert out == GeneralDecoder("x").decode(b'{"tokens": 80}', headers, TS)
    assert isinstance(out, Decoded)
    assert out.event.time == datetime(2026, 3, 1, 12, 0, 0, 123_000, tzinfo=UTC)
    assert decoder._layouts  # the fast path was taken (names remembered)


def test_decoded_and_events_equal_only_their_own_kind() -> None:
    out = decode_message(orjson.dumps(event()), STRUCTURED, TS, "default")
    assert isinstance(out, Decoded)
    assert out != tuple(out)
    assert out.event != tuple(out.event)
    assert out == Decoded(*out)
    assert hash(out) == hash(Decoded(*out))


@pytest.mark.parametrize(
    "content_type",
    [None, b"application/json", b"application/json; charset=utf-8", b"text/plain", b"application/cloudevents+json"],
)
def test_a_value_carrying_specversion_is_structured_whatever_its_content_type(content_type: bytes | None) -> None:
    """The official SDKs' structured mode labels the message with the data's content type."""
    headers = [] if content_type is None else [("content-type", content_type)]
    out = decode_message(orjson.dumps(event()), headers, TS, "default")
    assert isinstance(out, Decoded), out
    assert out.event.id == "e-1"


def test_data_base64_holding_json_is_the_data() -> None:
    import base64

    payload = base64.b64encode(b'{"tokens": 12.5, "model": "m"}').decode()
    out = decode_message(orjson.dumps(event(data=None, data_base64=payload)), [], TS, "default")
    assert isinstance(out, Decoded), out
    assert out.event.data == '{"model":"m","tokens":12.5}'
    not_json = base64.b64encode(b"\x00\x01binary").decode()
    bad = decode_message(orjson.dumps(event(data=None, data_base64=not_json)), [], TS, "default")
    assert isinstance(bad, Malformed)
    assert "send the usage as JSON data" in bad.reason
