"""The fast path of common/cloudevents.py's parse_time reads exactly like the general reading, for any input.
(validate_event's own fast path was replaced by the compiled schema: tests/unit/test_decoder_oracle.py holds
it to the validation it replaced.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from common import cloudevents
from common.cloudevents import EventValidationError, parse_time

RECEIVED = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def outcome(fn: Any, *args: Any, **kwargs: Any) -> object:
    try:
        return fn(*args, **kwargs)
    except EventValidationError as exc:
        return ("error", exc.message, exc.field)


def general_parse_time(value: object) -> datetime:
    """parse_time without its fast path: the regex groups, the offset, then the truncation."""
    assert isinstance(value, str)
    m = cloudevents._RFC3339.fullmatch(value)
    if m is None:
        raise EventValidationError("no match", field="time")
    year, month, day, hour, minute, second, frac, offset = m.groups()
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    try:
        hours, minutes = (0, 0) if offset in ("Z", "z") else (int(offset[:3]), int(offset[0] + offset[4:6]))
        tz = timezone(timedelta(hours=hours, minutes=minutes))
        parsed = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz)
        return cloudevents.truncate_to_millis(parsed.astimezone(UTC))
    except (ValueError, OverflowError):
        raise EventValidationError("invalid", field="time") from None


texts = st.one_of(
    st.sampled_from(["", " ", "\u2003", "x", " x ", "a" * 1024, "a" * 1025, "1.0", "application/json"]),
    st.text(max_size=8),
)
values = st.one_of(st.none(), texts, st.integers(), st.booleans(), st.lists(st.integers(), max_size=2))
times = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "2026-03-01T00:00:00Z",
            "2026-03-01T00:00:00.037Z",
            "2026-03-01T00:00:00.0371234Z",
            "2026-03-01t00:00:00z",
            "2026-02-30T00:00:00Z",
            "2026-03-01T24:00:00Z",
            "1969-12-31T23:59:59.999Z",
            "2200-01-01T00:00:00Z",
            "2199-12-31T23:59:59.9999Z",
            "2026-03-01T00:00:00+01:30",
            "2026-03-01 00:00:00Z",
            "2026-03-01T00:00:00",
            "2026-03-01T00:00:00Z\n",
            "२०२६-03-01T00:00:00Z",
            "2026-03-01T00:00:00+00:00",
            "2026-03-01T00:00:00.0371234+00:00",
            "2026-03-01T00:00:00-00:00",
            "2026-03-01T00:00:00+00:00\n",
            "2026-02-30T00:00:00+00:00",
            "2199-12-31T23:59:59.9999+00:00",
            "2200-01-01T00:00:00+00:00",
            "2026-03-01T00:00:00.123456789+00:00",
            "2026-03-01T00:00:00.1234567890Z",
            "2026-03-01T00:00:00,5Z",
        ]
    ),
    st.datetimes(min_value=datetime(1960, 1, 1), max_value=datetime(2250, 1, 1)).map(lambda d: d.isoformat() + "Z"),
    st.datetimes(min_value=datetime(1960, 1, 1), max_value=datetime(2250, 1, 1)).map(
        lambda d: d.isoformat() + "+00:00"
    ),
    values,
)


@settings(max_examples=600)
@given(times)
def test_parse_time_fast_path_reads_the_same_instant(value: object) -> None:
    result = outcome(parse_time, value)
    if isinstance(result, datetime):
        assert result == general_parse_time(value)
        assert result.tzinfo is UTC
        assert result.microsecond % 1000 == 0
    elif isinstance(value, str):  # refused: the general reading fails too, or falls out of range
        general = outcome(general_parse_time, value)
        assert (
            not isinstance(general, datetime) or not cloudevents.MIN_EVENT_TIME <= general < cloudevents.MAX_EVENT_TIME
        )
