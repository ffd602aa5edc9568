"""Only IANA names both Python and ClickHouse know are accepted as window time zones."""

from __future__ import annotations

import pytest

from aggregator.query import InvalidQuery, check_time_zone
from common.errors import InvalidInput
from common.timezones import known_zone
from entitlements.service.history import zone


@pytest.mark.parametrize("name", ["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "Asia/Kolkata"])
def test_canonical_names_are_accepted(name: str) -> None:
    assert known_zone(name) is not None
    assert check_time_zone(name) == name
    assert zone(name).key == name


@pytest.mark.parametrize(
    "name", ["right/UTC", "posix/Europe/Berlin", "../../etc/passwd", "Mars/Olympus", "", "x" * 500]
)
def test_other_names_are_a_400(name: str) -> None:
    assert known_zone(name) is None
    with pytest.raises(InvalidQuery):
        check_time_zone(name)
    with pytest.raises(InvalidInput):
        zone(name)
