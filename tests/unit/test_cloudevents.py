"""CloudEvents parsing and validation (common/cloudevents.py): tables of good and hostile input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.clock import format_time
from common.cloudevents import (
    MAX_ATTRIBUTE_LENGTH,
    CloudEvent,
    EventValidationError,
    canonical_data,
    decode_json,
    parse_time,
    validate_batch,
    validate_event,
)
from common.errors import InvalidInput

RECEIVED = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def good(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "svc",
        "type": "tokens",
        "subject": "customer-1",
        "time": "2025-01-01T00:00:00.123Z",
        "data": {"tokens": 5},
    }
    event.update(overrides)
    return event


def rejects(obj: object, field: str | None) -> EventValidationError:
    with pytest.raises(EventValidationError) as info:
        validate_event(obj, default_time=RECEIVED)
    assert info.value.field == field, info.value.message
    assert info.value.message
    return info.value


def test_a_good_event() -> None:
    e = validate_event(good(), default_time=RECEIVED)
    assert e == CloudEvent(
        id="evt-1",
        source="svc",
        type="tokens",
        subject="customer-1",
        time=datetime(2025, 1, 1, 0, 0, 0, 123000, tzinfo=UTC),
        data='{"tokens":5}',
    )


@pytest.mark.parametrize(
    "obj",
    [None, [], [good()], "event", 42, 4.2, True, b"bytes"],
)
def test_not_an_object(obj: object) -> None:
    rejects(obj, None)


@pytest.mark.parametrize("name", ["id", "source", "specversion", "type", "subject"])
@pytest.mark.parametrize(
    "value",
    [None, "", "   ", "\t\n", 0, 1, 1.5, True, False, [], ["a"], {}, {"a": 1}],
)
def test_required_string_attributes(name: str, value: object) -> None:
    event = good(**{name: value})
    if value is None:
        del event[name]
    rejects(event, name)


@pytest.mark.parametrize("name", ["id", "source", "type", "subject"])
def test_huge_attributes_are_refused(name: str) -> None:
    rejects(good(**{name: "x" * (MAX_ATTRIBUTE_LENGTH + 1)}), name)
    assert validate_event(good(**{name: "x" * MAX_ATTRIBUTE_LENGTH}), default_time=RECEIVED)


@pytest.mark.parametrize("version", ["0.3", "1", "1.0.0", "2.0", " 1.0"])
def test_only_spec_version_1_0(version: str) -> None:
    rejects(good(specversion=version), "specversion")


@pytest.mark.parametrize(
    "data",
    ["text", 1, 1.5, True, [1, 2], ["a"], [{"a": 1}], ""],
)
def test_data_must_be_an_object_or_null(data: object) -> None:
    rejects(good(data=data), "data")


def test_missing_and_null_data_are_stored_as_null() -> None:
    without = good()
    del without["data"]
    assert validate_event(without, default_time=RECEIVED).data == "null"
    assert validate_event(good(data=None), default_time=RECEIVED).data == "null"


def test_nested_junk_in_data_is_kept_verbatim_and_canonical() -> None:
    junk = {"z": [None, True, {"deep": [[[[{"x": "\u0000\u202e\ud7ff"}]]]]}], "a": {"": -0.0, "n": 10**18}}
    e = validate_event(good(data=junk), default_time=RECEIVED)
    assert orjson.loads(e.data) == junk
    assert e.data.index('"a"') < e.data.index('"z"')  # sorted keys: equal payloads compare equal


def test_data_key_order_does_not_matter() -> None:
    a = validate_event(good(data={"a": 1, "b": {"y": 2, "x": 1}}), default_time=RECEIVED)
    b = validate_event(good(data={"b": {"x": 1, "y": 2}, "a": 1}), default_time=RECEIVED)
    assert a.data == b.data


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/cloudevents+json", "", 5])
def test_datacontenttype_only_json(content_type: object) -> None:
    rejects(good(datacontenttype=content_type), "datacontenttype")


def test_datacontenttype_json_is_fine() -> None:
    assert validate_event(good(datacontenttype="application/json"), default_time=RECEIVED)


def test_data_base64_is_data_when_it_holds_json_and_refused_otherwise() -> None:
    import base64

    as_json = base64.b64encode(b'{"tokens": 5}').decode()
    event = validate_event({**good(), "data": None, "data_base64": as_json}, default_time=RECEIVED)
    assert event.data == '{"tokens":5}'
    rejects({**good(), "data": None, "data_base64": "aGVsbG8="}, "data_base64")  # "hello": not JSON
    rejects({**good(), "data": None, "data_base64": "%%%"}, "data_base64")  # not base64
    rejects({**good(), "data": None, "data_base64": base64.b64encode(b"[1]").decode()}, "data_base64")
    rejects(good(data_base64=as_json), "data_base64")  # both data and data_base64
    err = rejects({**good(), "data": None, "data_base64": "aGVsbG8="}, "data_base64")
    assert "send the usage as JSON data" in err.message


def test_unknown_extension_attributes_are_ignored() -> None:
    assert validate_event(good(traceparent="00-abc", dataschema="x", extra={"a": 1}), default_time=RECEIVED)


# --- time ---------------------------------------------------------------------------------------------


def test_missing_time_is_the_receipt_time_to_the_millisecond() -> None:
    event = good()
    del event["time"]
    assert validate_event(event, default_time=RECEIVED).time == datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert validate_event(good(time=None), default_time=RECEIVED).time.microsecond == 678000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-01T00:00:00Z", datetime(2025, 1, 1, tzinfo=UTC)),
        ("2025-01-01t00:00:00z", datetime(2025, 1, 1, tzinfo=UTC)),
        ("2025-01-01 00:00:00Z", datetime(2025, 1, 1, tzinfo=UTC)),
        ("2025-01-01T00:00:00.1Z", datetime(2025, 1, 1, 0, 0, 0, 100000, tzinfo=UTC)),
        ("2025-01-01T00:00:00.12Z", datetime(2025, 1, 1, 0, 0, 0, 120000, tzinfo=UTC)),
        ("2025-01-01T00:00:00.123Z", datetime(2025, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)),
        ("2025-01-01T00:00:00.1239Z", datetime(2025, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)),  # truncated, not rounded
        ("2025-01-01T00:00:00.999999999Z", datetime(2025, 1, 1, 0, 0, 0, 999000, tzinfo=UTC)),
        ("2025-01-01T02:30:00.5+02:30", datetime(2025, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
        ("2024-12-31T19:00:00-05:00", datetime(2025, 1, 1, tzinfo=UTC)),
        ("2025-01-01T00:00:00+00:00", datetime(2025, 1, 1, tzinfo=UTC)),
        ("2025-01-01T00:00:00-00:00", datetime(2025, 1, 1, tzinfo=UTC)),
        ("2024-02-29T23:59:59.999+23:59", datetime(2024, 2, 29, 0, 0, 59, 999000, tzinfo=UTC)),
        ("1970-01-01T00:00:00Z", datetime(1970, 1, 1, tzinfo=UTC)),
        ("2199-12-31T23:59:59.999Z", datetime(2199, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
    ],
)
def test_rfc3339_times(text: str, expected: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed.tzinfo == UTC


@pytest.mark.parametrize(
    "text",
    [
        "2025-01-01T00:00:00",  # no offset: ambiguous
        "2025-01-01",
        "2025-01-01T00:00Z",
        "2025-13-01T00:00:00Z",
        "2025-02-30T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2025-01-01T24:00:00Z",
        "2025-01-01T00:60:00Z",
        "2025-01-01T00:00:60Z",  # leap seconds are not representable
        "2025-01-01T00:00:00+24:00",
        "2025-01-01T00:00:00+05:60",
        "2025-01-01T00:00:00+0500",
        "2025-01-01T00:00:00.Z",
        "2025-01-01T00:00:00.1234567890Z",
        "  2025-01-01T00:00:00Z",
        "2025-01-01T00:00:00Z\n",
        "٢٠٢٥-01-01T00:00:00Z",  # non-ASCII digits
        "1969-12-31T23:59:59.999Z",  # before 1970
        "1970-01-01T00:30:00+01:00",  # before 1970 once in UTC
        "0001-01-01T00:00:00Z",
        "2200-01-01T00:00:00Z",  # far in the future
        "9999-12-31T23:59:59Z",
        "yesterday",
        "",
        "1735689600",
    ],
)
def test_bad_times_are_refused(text: str) -> None:
    rejects(good(time=text), "time")


@pytest.mark.parametrize("value", [1735689600, 1735689600.5, True, [], {}, ["2025-01-01T00:00:00Z"]])
def test_time_must_be_a_string(value: object) -> None:
    rejects(good(time=value), "time")


def test_huge_time_string_is_refused_quickly() -> None:
    rejects(good(time="2025-01-01T00:00:00." + "9" * 100_000 + "Z"), "time")


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2199, 12, 31), timezones=st.just(UTC)))
def test_format_then_parse_keeps_milliseconds(t: datetime) -> None:
    parsed = parse_time(format_time(t))
    assert parsed == t.replace(microsecond=t.microsecond // 1000 * 1000)


@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2198, 12, 31)),
    st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
)
def test_offsets_are_normalised_to_utc(local: datetime, offset_minutes: int) -> None:
    sign = "+" if offset_minutes >= 0 else "-"
    hh, mm = divmod(abs(offset_minutes), 60)
    text = local.strftime("%Y-%m-%dT%H:%M:%S") + f".{local.microsecond // 1000:03d}{sign}{hh:02d}:{mm:02d}"
    expected = (
        local.replace(microsecond=local.microsecond // 1000 * 1000) - timedelta(minutes=offset_minutes)
    ).replace(tzinfo=UTC)
    assert parse_time(text) == expected


# --- documents and batches ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[", b"{'a': 1}", b"nul", b"\xff\xfe\x00{", b'{"id": "\xc3\x28"}', b"\xed\xa0\x80", b"[1,]", b"NaN"],
)
def test_malformed_or_non_utf8_json(body: bytes) -> None:
    with pytest.raises(InvalidInput, match="malformed JSON"):
        decode_json(body)


def test_deeply_nested_data_is_refused_not_crashing() -> None:
    # Refused either while decoding (orjson >= 3.9 stops at depth 1024) or by validation: never a crash.
    def decode_then_validate(data: bytes) -> object:
        return validate_event(good(data=decode_json(data)), default_time=RECEIVED)

    with pytest.raises(InvalidInput):
        decode_then_validate(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")


def test_integers_past_64_bits_in_data_are_refused() -> None:
    rejects(good(data={"n": 2**64}), "data")


def test_batch_names_the_first_bad_index_and_field() -> None:
    values: list[object] = [good(id=f"e{i}") for i in range(5)]
    values[3] = good(id="e3", subject=7)
    values[4] = good(id="")
    with pytest.raises(EventValidationError) as info:
        validate_batch(values, default_time=RECEIVED)
    assert (info.value.index, info.value.field, info.value.pointer) == (3, "subject", "[3].subject")


def test_batch_of_non_objects() -> None:
    with pytest.raises(EventValidationError) as info:
        validate_batch([good(), 5], default_time=RECEIVED)
    assert (info.value.index, info.value.field, info.value.pointer) == (1, None, "[1]")


def test_good_batch_keeps_order() -> None:
    events = validate_batch([good(id=f"e{i}") for i in range(50)], default_time=RECEIVED)
    assert [e.id for e in events] == [f"e{i}" for i in range(50)]


def test_event_json_round_trip() -> None:
    e = validate_event(good(data={"b": 1, "a": [1, 2]}), default_time=RECEIVED)
    again = validate_event(orjson.loads(e.to_json()), default_time=RECEIVED)
    assert again == e
    assert e.to_json_dict()["time"] == "2025-01-01T00:00:00.123Z"


def test_canonical_data_of_none() -> None:
    assert canonical_data(None) == "null"


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)
    )
)
def test_any_json_value_is_validated_or_refused_with_a_field(value: object) -> None:
    """Whatever JSON arrives as `data`, validation either accepts an object/null or names `data`."""
    data = good(data=value)
    storable = value is None or (isinstance(value, dict) and fits_64_bits(value))
    if storable:
        assert orjson.loads(validate_event(data, default_time=RECEIVED).data) == value
    else:
        rejects(data, "data")


def fits_64_bits(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | list | dict):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    items = value.values() if isinstance(value, dict) else value
    return all(fits_64_bits(v) for v in items)
