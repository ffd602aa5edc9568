"""Time zones the API accepts: IANA names both Python and ClickHouse know.

`zoneinfo.ZoneInfo` also opens the `right/` (leap-second) and `posix/` trees and any file path below the
zoneinfo directory, which ClickHouse refuses (a 500 at query time). Only canonical names from
`available_timezones()` (which leaves those trees out) are accepted, plus UTC.
"""

from __future__ import annotations

import functools
from zoneinfo import ZoneInfo, available_timezones

MAX_ZONE_NAME = 64


@functools.cache
def _known() -> frozenset[str]:
    return frozenset(available_timezones() | {"UTC"})


def known_zone(name: str) -> ZoneInfo | None:
    """The zone, or None when the name is not one both engines know."""
    if not isinstance(name, str) or len(name) > MAX_ZONE_NAME or name not in _known():
        return None
    return ZoneInfo(name)
