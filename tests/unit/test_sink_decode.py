"""Decoding both CloudEvents Kafka bindings, including hostile input: every message ends as an event or
a reason, never an exception."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.sink.decode import Decoded, Malformed, decode_message

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
        (orjson.dumps(event()), [("content-type", b"text/plain")], TS, "content-type"),
        (orjson.dumps(event()), [("namespace", b"\xff\xfe")], TS, "UTF-8"),
        (orjson.dumps(event()), [("namespace", b"bad namespace!")], TS, "namespace"),
        (orjson.dumps(event()), [("namespace", b"n" * 65)], TS, "namespace"),
        (orjson.dumps(event()), [("namespace", b"acme\n")], TS, "namespace"),  # `$` matched before a newline
        (orjson.dumps(event()), [("namespace", b"x" * 5000)], TS, "longer"),
        (orjson.dumps(event()), [("ingested_at", b"not a time")], TS, "ingested_at"),
        (orjson.dumps(event()), [("ingested_at", 12345)], TS, "bytes"),  # type: ignore[list-item]
        (b'{"a":1}', binary_headers(id=None), TS, "id"),
        (b'{"a":1}', [*binary_headers()[:-1], ("content-type", b"text/plain")], TS, "content-type"),
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
