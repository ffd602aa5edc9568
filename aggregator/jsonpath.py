"""The JSONPath subset meters use (pure): `$.a.b`, `$['a']`, `$["a"]`, `$.a[0]` and mixes of them.

A path compiles to segments (str = object key, int = array index, 0-based, negative from the end). The
same segments drive the ClickHouse JSONExtract arguments and the Python evaluation used to explain why
an event is invalid for a meter, so the two cannot disagree on what a path selects.
"""

from __future__ import annotations

import re
from typing import Any

from common.errors import InvalidInput

Segment = str | int

MAX_PATH_LENGTH = 256
# ClickHouse's JSONExtract takes an Int64 index; an index past any real array is refused here, at create,
# instead of making ClickHouse refuse the meter's view.
MAX_INDEX = 1_000_000
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_INDEX = re.compile(r"\[(-?\d+)\]")
_QUOTED = re.compile(r"""\[(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\]""")


class InvalidJsonPath(InvalidInput):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"invalid JSONPath {path!r}: {reason}", path=path)


def parse_path(path: str) -> tuple[Segment, ...]:
    """Compile a JSONPath of the supported subset; raises InvalidJsonPath."""
    if not isinstance(path, str) or not path.startswith("$"):
        raise InvalidJsonPath(str(path), "it must start with $")
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidJsonPath(path[:40], f"longer than {MAX_PATH_LENGTH} characters")
    segments: list[Segment] = []
    pos = 1
    while pos < len(path):
        if path[pos] == ".":
            m = _IDENT.match(path, pos + 1)
            if m is None:
                raise InvalidJsonPath(path, f"expected a property name at position {pos + 1}")
            segments.append(m.group(0))
            pos = m.end()
            continue
        m = _INDEX.match(path, pos)
        if m is not None:
            if len(m.group(1)) > 8 or abs(int(m.group(1))) > MAX_INDEX:
                raise InvalidJsonPath(path, f"array index out of range (at most {MAX_INDEX} either way)")
            segments.append(int(m.group(1)))
            pos = m.end()
            continue
        m = _QUOTED.match(path, pos)
        if m is not None:
            raw = m.group(1) if m.group(1) is not None else m.group(2)
            segments.append(re.sub(r"\\(.)", r"\1", raw))
            pos = m.end()
            continue
        raise InvalidJsonPath(path, f"unsupported syntax at position {pos} (use $.a.b, $['a'] or $.a[0])")
    if not segments:
        raise InvalidJsonPath(path, "it must select a property, not the whole document")
    return tuple(segments)


_MISSING = object()


def evaluate(segments: tuple[Segment, ...], document: Any) -> Any:
    """The value the path selects, or `MISSING` when it selects nothing."""
    current = document
    for seg in segments:
        if isinstance(seg, str):
            if not isinstance(current, dict) or seg not in current:
                return _MISSING
            current = current[seg]
        else:
            if not isinstance(current, list) or not -len(current) <= seg < len(current):
                return _MISSING
            current = current[seg]
    return current


MISSING = _MISSING


def clickhouse_args(segments: tuple[Segment, ...]) -> str:
    """JSONExtract* trailing arguments: quoted keys and 1-based indexes (ClickHouse counts from 1)."""
    parts: list[str] = []
    for seg in segments:
        if isinstance(seg, str):
            escaped = seg.replace("\\", "\\\\").replace("'", "\\'")
            parts.append(f"'{escaped}'")
        else:
            parts.append(str(seg + 1 if seg >= 0 else seg))
    return ", ".join(parts)
