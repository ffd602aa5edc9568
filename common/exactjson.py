"""JSON that never rounds a number silently, in and out.

`dumps` is the one encoding every route answers with: Decimals as JSON numbers digit for digit
(`decimal_text`, through orjson's Fragment: no float on the way), datetimes as `format_time` writes them.

orjson (fast) turns a number literal into a 64-bit float or integer: `100000000000000000000000001` becomes
`1e+26` and `0.12345678901234567891` loses its tail, and nothing says so. Usage must be exact, so a
document whose numbers a float cannot hold exactly is refused with a message that says what to do (send
the value as a string: meters accept numeric strings). The check costs nothing for ordinary documents:
only text with a run of 16 or more digits (dots aside) is parsed a second time, with Decimal, and compared.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from common.clock import format_time
from common.errors import InvalidInput

# A number literal a double may fail to round-trip has at least 16 digits, possibly with one '.' among
# them: the regex rb"(?:\d\.?){16}" finds those, but costs 4 us on a 160-byte event (the sink's hot
# path). The same test in 0.3 us: every digit becomes '0', every '.' goes, then look for 16 zeros.
# It flags everything the regex flags (deleting the dots joins each regex match into one run) and a
# little more (digits separated by dots anywhere, e.g. inside strings): what it flags is only
# checked more closely, never refused for that alone.
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_SIXTEEN_ZEROS = b"0" * 16


def may_hold_long_number(data: bytes) -> bool:
    """False when `data` certainly has no number literal a float could round (no run of 16 digits)."""
    return _SIXTEEN_ZEROS in data.translate(_DIGITS_TO_ZERO, b".")


class InexactNumberError(ValueError):
    """A number in the document cannot be kept exactly; `text` is the literal."""

    def __init__(self, text: str) -> None:
        super().__init__(
            f"the number {text} has more digits than Metergate can keep exactly as a JSON number "
            "(about 15 significant digits, or an integer past 64 bits): send it as a string, e.g. "
            f'"{text}"'
        )
        self.text = text


def loads(raw: bytes | str) -> Any:
    """orjson.loads, refusing (InexactNumberError) what it would have rounded.

    Raises orjson.JSONDecodeError for malformed input, like orjson.loads.
    """
    value = orjson.loads(raw)
    data = raw.encode() if isinstance(raw, str) else raw
    if not may_hold_long_number(data):
        return value
    try:
        exact = json.loads(data, parse_float=Decimal, parse_int=int)
    except RecursionError:  # deeper than the stdlib parser goes: orjson accepted it, so no number is long
        return value
    _compare(value, exact)
    return value


def _compare(fast: Any, exact: Any) -> None:
    """Walk both parses together (iteratively: documents may nest ~1000 levels)."""
    stack = [(fast, exact)]
    while stack:
        f, e = stack.pop()
        if isinstance(e, bool) or e is None or isinstance(e, str):
            continue
        if isinstance(e, Decimal):
            # orjson's float prints back in its shortest form; the value must be the literal's value.
            if not isinstance(f, float) or Decimal(repr(f)) != e:
                raise InexactNumberError(str(e))
        elif isinstance(e, int):
            if isinstance(f, bool) or not isinstance(f, int) or f != e:
                raise InexactNumberError(str(e))
        elif isinstance(e, dict) and isinstance(f, dict):
            stack.extend((f[k], v) for k, v in e.items() if k in f)
        elif isinstance(e, list) and isinstance(f, list):
            stack.extend(zip(f, e, strict=False))


def decimal_text(d: Decimal) -> str:
    """A JSON number for d, digit for digit: plain notation, no trailing zeros (100, 0.5, -3.25).

    The one rendering every route uses. `format(d, "f")` is exact; `d.normalize()` would round to the
    context's 28 digits (a SUM of 12345678901234567890.123456789 + 550.5 came back ...68440.62345679)."""
    if not d.is_finite():
        raise ValueError("JSON numbers are finite")
    if d == 0:
        return "0"
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def dumps(value: Any) -> bytes:
    """JSON bytes (orjson, in C): Decimal -> an exact number, datetime -> RFC 3339 UTC with milliseconds."""
    encoded: bytes = orjson.dumps(
        value, default=_exact, option=orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS
    )
    return encoded


def _exact(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(decimal_text(value).encode())
    if isinstance(value, datetime):
        return format_time(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ---- request bodies with Decimal numbers ----

MAX_JSON_DEPTH = 32


def loads_decimal(body: bytes) -> Any:
    """JSON with every number a Decimal (the entitlement and notification routes' request bodies).

    Refuses NaN/Infinity, non-UTF-8 and nesting past MAX_JSON_DEPTH (checked before parsing: the recursive
    parser would otherwise fail deep inside itself)."""
    check_depth(body, MAX_JSON_DEPTH)
    try:
        value = json.loads(body, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    check_strings(value)
    return value


def check_strings(value: Any) -> None:
    """No string (or key) may hold a NUL or a lone surrogate (`"\\ud800"`): neither database stores them
    faithfully (PostgreSQL refuses both), so they are a 400 here rather than a 500 at the insert."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput("strings must not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput("strings must be valid Unicode (a lone surrogate escape was sent)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_strings(key)
            check_strings(item)
    elif isinstance(value, list):
        for item in value:
            check_strings(item)


_OPENERS = frozenset(b"[{")
_CLOSERS = frozenset(b"]}")


def check_depth(body: bytes, limit: int) -> None:
    """Raise InvalidInput if arrays/objects nest deeper than `limit` (string contents are skipped)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in _OPENERS:
            depth += 1
            if depth > limit:
                raise InvalidInput(f"JSON nested deeper than {limit} levels")
        elif byte in _CLOSERS:
            depth -= 1


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")
