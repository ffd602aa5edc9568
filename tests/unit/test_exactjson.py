"""Numbers are never rounded silently: what a float cannot hold exactly is refused, with a way out."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.http import render
from common import exactjson
from common.cloudevents import decode_json
from common.errors import InvalidInput
from common.exactjson import dumps
from entitlements.schemas import encode
from ingest.sink.decode import Decoder, Malformed

KEPT = [
    b'{"a":1,"b":0.1,"c":"12345678901234567890123"}',  # long digits inside a string are just text
    b'{"n":12345678901234567}',  # a 64-bit integer
    b'{"n":9223372036854775807}',
    b'{"n":0.000000000000001}',  # many digits, but a float holds the value exactly as printed
    b'{"n":1234567.123456789}',
    b"[1.5, 2, -0.0, 1e300]",
]
REFUSED = [
    (b'{"n":100000000000000000000000001}', "100000000000000000000000001"),
    (b'{"n":18446744073709551616}', "18446744073709551616"),
    (b'{"n":0.12345678901234567891}', "0.12345678901234567891"),
    (b'{"deep":[[{"x":[1, 2.0000000000000000001]}]]}', "2.0000000000000000001"),
]


@pytest.mark.parametrize("raw", KEPT)
def test_numbers_a_float_keeps_exactly_pass(raw: bytes) -> None:
    assert exactjson.loads(raw) == orjson.loads(raw)


@pytest.mark.parametrize(("raw", "number"), REFUSED)
def test_numbers_that_would_be_rounded_are_refused(raw: bytes, number: str) -> None:
    with pytest.raises(exactjson.InexactNumberError) as info:
        exactjson.loads(raw)
    assert info.value.text == number
    with pytest.raises(InvalidInput, match="send it as a string"):
        decode_json(raw)


@given(st.decimals(allow_nan=False, allow_infinity=False, places=None))
def test_a_kept_number_is_the_literal_value(d: Decimal) -> None:
    raw = f'{{"n": {d}}}'.encode()
    try:
        value = exactjson.loads(raw)["n"]
    except exactjson.InexactNumberError:
        return  # refused: nothing was rounded
    except orjson.JSONDecodeError:
        return  # e.g. an exponent past the float range
    assert Decimal(repr(value)) == d


def test_the_sink_dead_letters_a_number_it_would_round() -> None:
    value = (
        b'{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"x",'
        b'"data":{"tokens":100000000000000000000000001}}'
    )
    headers = [("content-type", b"application/cloudevents+json")]
    decoded = Decoder(default_namespace="default").decode(value, headers, 1_700_000_000_000)
    assert isinstance(decoded, Malformed)
    assert "send it as a string" in decoded.reason


LONG_DIGITS = re.compile(rb"(?:\d\.?){16}")  # the definition the fast filter must cover


@given(st.lists(st.sampled_from([b"0", b"7", b"9", b".", b"-", b"e", b'"', b",", b"a", b" "]), max_size=60))
def test_the_fast_filter_flags_every_long_digit_run(parts: list[bytes]) -> None:
    data = b"".join(parts)
    if LONG_DIGITS.search(data):
        assert exactjson.may_hold_long_number(data)


@pytest.mark.parametrize(
    ("data", "flagged"),
    [
        (b'{"n":123456789012345}', False),  # 15 digits: every double prints them back
        (b'{"n":1234567890123456}', True),
        (b'{"n":1234567.890123456}', True),
        (b'{"t":"2026-03-01T00:00:00.037Z","id":"evt-0000001"}', False),
    ],
)
def test_the_fast_filter_on_examples(data: bytes, flagged: bool) -> None:
    assert exactjson.may_hold_long_number(data) is flagged


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("12345678901234568440.623456789", "12345678901234568440.623456789"),  # was rounded to 28 digits
        ("99999999999999999999999999999.999999999", "99999999999999999999999999999.999999999"),  # Decimal(38, 9)
        ("-99999999999999999999999999999.999999999", "-99999999999999999999999999999.999999999"),
        ("0.000000001", "0.000000001"),
        ("12.500000000", "12.5"),
        ("1E+2", "100"),
        ("-0", "0"),
        ("0E-9", "0"),
    ],
)
def test_decimal_text_is_exact_at_the_limits(value: str, text: str) -> None:
    from decimal import Decimal

    from aggregator.query import decimal_text as meter_text
    from common.exactjson import decimal_text
    from entitlements.schemas import decimal_text as entitlement_text

    assert decimal_text(Decimal(value)) == text
    assert meter_text is decimal_text is entitlement_text  # one rendering for every route


@settings(deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False, places=9, min_value=-(10**29) + 1, max_value=10**29 - 1))
def test_every_route_encodes_decimal_38_9_exactly(d: Decimal) -> None:
    """One encoder (common.exactjson.dumps) for the meter and entitlement routes: the number read back with
    Decimal is the number written, and datetimes come out in Metergate's one form."""
    body = {"value": d, "at": datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), "nested": [{"v": d}]}
    for encoder in (dumps, render, encode):
        raw = encoder(body)
        back = json.loads(raw, parse_float=Decimal, parse_int=Decimal)
        assert back["value"] == d
        assert back["nested"][0]["v"] == d
        assert back["at"] == "2024-01-02T03:04:05.678Z"
    assert render(body) == encode(body) == dumps(body)
