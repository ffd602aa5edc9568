"""Pure pieces of the entitlement API: exact decimal JSON, request validation, history window edges."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import InvalidInput
from entitlements.schemas import GrantCreateBody, decimal_text, encode, parse_body
from entitlements.service.history import WindowSize, window_edges

decimals = st.decimals(allow_nan=False, allow_infinity=False, min_value=Decimal("-1e30"), max_value=Decimal("1e30"))


@given(decimals)
def test_decimals_round_trip_through_json_exactly(d: Decimal) -> None:
    text = encode({"amount": d}).decode()
    assert json.loads(text, parse_float=Decimal, parse_int=Decimal)["amount"] == d
    assert "e" not in text.lower()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("100.000000000"), "100"),
        (Decimal("1E+2"), "100"),
        (Decimal("0.050"), "0.05"),
        (Decimal("-0"), "0"),
        (Decimal("-3.250"), "-3.25"),
        (Decimal("12345678901234567890.123456789"), "12345678901234567890.123456789"),
    ],
)
def test_decimal_text(value: Decimal, text: str) -> None:
    assert decimal_text(value) == text


def test_nested_values_and_times_encode() -> None:
    body = {"a": [Decimal("1.5"), None, True, "x"], "t": datetime(2024, 1, 1, 12, tzinfo=UTC), "n": {"k": 2}}
    assert json.loads(encode(body)) == {"a": [1.5, None, True, "x"], "t": "2024-01-01T12:00:00.000Z", "n": {"k": 2}}


def test_request_bodies_keep_amounts_exact_and_name_bad_fields() -> None:
    body = b'{"amount": 0.1, "effectiveAt": "2024-01-01T00:00:00Z", "expiration": {"duration": "DAY", "count": 1}}'
    assert parse_body(GrantCreateBody, body).amount == Decimal("0.1")
    with pytest.raises(InvalidInput) as exc:
        parse_body(
            GrantCreateBody,
            b'{"amount": 1, "effectiveAt": "2024-01-01T00:00:00Z", '
            b'"expiration": {"duration": "FORTNIGHT", "count": 1}}',
        )
    assert exc.value.fields["field"] == "expiration.duration"
    with pytest.raises(InvalidInput):
        parse_body(GrantCreateBody, b'{"amount": NaN}')
    with pytest.raises(InvalidInput):
        parse_body(GrantCreateBody, b"[1, 2]")
    with pytest.raises(InvalidInput):
        parse_body(GrantCreateBody, b'{"amount": 1, "effectiveAt": "2024-01-01T00:00:00"}')  # naive time


def test_day_windows_follow_local_midnight_across_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2024, 3, 30, 12, tzinfo=UTC)
    end = datetime(2024, 4, 1, 12, tzinfo=UTC)
    edges = window_edges(start, end, WindowSize.DAY, berlin)
    assert edges == [
        start,
        datetime(2024, 3, 30, 23, tzinfo=UTC),  # local midnight, CET (+1)
        datetime(2024, 3, 31, 22, tzinfo=UTC),  # local midnight, CEST (+2): a 23-hour day
        end,
    ]


@given(
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)),
    st.integers(1, 2000),
    st.sampled_from(list(WindowSize)),
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
)
def test_window_edges_cover_the_range_in_order(start: datetime, hours: int, size: WindowSize, tz: str) -> None:
    end = start + timedelta(hours=min(hours, 150) if size is WindowSize.MINUTE else hours)  # <= 10,000 windows
    edges = window_edges(start, end, size, ZoneInfo(tz))
    assert edges[0] == start
    assert edges[-1] == end
    assert all(a < b for a, b in itertools.pairwise(edges))
