from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.config import parse_config
from aggregator.meter import Aggregation, InvalidMeter, parse_meter, parse_number, validation_error

SUM = {
    "slug": "tokens",
    "aggregation": "SUM",
    "eventType": "prompt",
    "valueProperty": "$.tokens",
    "groupBy": {"model": "$.model"},
}


def meter(body: dict[str, Any]) -> Any:
    return parse_meter(body, meter_id="m1", namespace="ns")


def test_valid_meter_round_trips_openmeter_fields() -> None:
    m = meter(SUM)
    assert m.aggregation is Aggregation.SUM
    api = m.to_api()
    assert {k: api[k] for k in ("slug", "aggregation", "eventType", "valueProperty", "groupBy")} == {
        k: SUM[k] for k in ("slug", "aggregation", "eventType", "valueProperty", "groupBy")
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**SUM, "aggregation": "COUNT"}, "valueProperty"),  # forbidden for COUNT
        ({k: v for k, v in SUM.items() if k != "valueProperty"}, "valueProperty"),  # required otherwise
        ({**SUM, "aggregation": "MEDIAN"}, "aggregation"),
        ({**SUM, "slug": "Bad Slug"}, "slug"),
        ({**SUM, "valueProperty": "tokens"}, "valueProperty"),
        ({**SUM, "groupBy": {"subject": "$.s"}}, "groupBy.subject"),
        ({**SUM, "groupBy": {"m": "$..x"}}, "groupBy.m"),
        ({**SUM, "eventType": ""}, "eventType"),
        ({**SUM, "extra": 1}, "extra"),
        ({**SUM, "eventFrom": "yesterday"}, "eventFrom"),
    ],
)
def test_invalid_meters_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidMeter) as exc:
        meter(body)
    assert exc.value.fields["field"] == field


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, Decimal(3)),
        ("12.5", Decimal("12.5")),
        ("1e3", Decimal(1000)),
        (0.1, Decimal("0.1")),
        ("0.000000001", Decimal("1E-9")),
        ("0.0000000001", None),  # more than 9 decimals: not exact in Decimal(38, 9)
        ("1e-400", None),  # underflows to 0 everywhere: invalid, never counted as zero
        ("0e5", Decimal(0)),
        ("NaN", None),
        ("inf", None),
        ("-Infinity", None),
        ("abc", None),
        ("", None),
        (" 12", None),
        ("1_000", None),
        ("1e29", None),
        (True, None),
        (None, None),
        ({"a": 1}, None),
    ],
)
def test_parse_number(value: object, expected: Decimal | None) -> None:
    assert parse_number(value) == expected


@given(st.decimals(min_value=-(10**20), max_value=10**20, places=9, allow_nan=False, allow_infinity=False))
def test_numbers_with_nine_decimals_are_exact(d: Decimal) -> None:
    assert parse_number(str(d)) == d


def test_validation_error_explains_skipped_events() -> None:
    m = meter(SUM)
    assert validation_error([m], "prompt", '{"tokens": 5}') is None
    assert validation_error([m], "other", "{}") is None
    assert "missing" in (validation_error([m], "prompt", '{"x": 1}') or "")
    assert "finite number" in (validation_error([m], "prompt", '{"tokens": "NaN"}') or "")
    count = meter({"slug": "c", "aggregation": "COUNT", "eventType": "prompt"})
    assert validation_error([count], "prompt", "null") is None


def test_config_meters_have_stable_ids_and_reject_duplicates() -> None:
    a, b = parse_config({"meters": [SUM]}), parse_config({"meters": [dict(SUM)]})
    assert a[0].id == b[0].id
    assert a[0].namespace is None
    changed = parse_config({"meters": [{**SUM, "valueProperty": "$.t2"}]})
    assert changed[0].id != a[0].id
    with pytest.raises(InvalidMeter):
        parse_config({"meters": [SUM, SUM]})
