from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.jsonpath import MISSING, clickhouse_args, evaluate, parse_path
from common.errors import InvalidInput


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        ("$.tokens", ("tokens",)),
        ("$.usage.input", ("usage", "input")),
        ("$['a b']", ("a b",)),
        ('$["x"].y', ("x", "y")),
        ("$.items[0].n", ("items", 0, "n")),
        ("$.items[-1]", ("items", -1)),
        ("$['it\\'s']", ("it's",)),
    ],
)
def test_parse(path: str, segments: tuple[object, ...]) -> None:
    assert parse_path(path) == segments


@pytest.mark.parametrize(
    "path", ["", "tokens", "$", "$.", "$..a", "$.a[*]", "$.a[?(@.x)]", "$[0", "$.a b", "$" + ".a" * 200]
)
def test_rejects(path: str) -> None:
    with pytest.raises(InvalidInput):
        parse_path(path)


def test_clickhouse_args_are_one_based_and_quoted() -> None:
    assert clickhouse_args(("a", 0, "it's", -1)) == "'a', 1, 'it\\'s', -1"


@pytest.mark.parametrize(
    ("path", "doc", "expected"),
    [
        ("$.a.b", {"a": {"b": 1}}, 1),
        ("$.a[1]", {"a": [1, 2]}, 2),
        ("$.a[-1]", {"a": [1, 2]}, 2),
        ("$.a[2]", {"a": [1, 2]}, MISSING),
        ("$.a.b", {"a": [1]}, MISSING),
        ("$.a", None, MISSING),
        ("$.a", {"a": None}, None),
    ],
)
def test_evaluate(path: str, doc: object, expected: object) -> None:
    assert evaluate(parse_path(path), doc) is expected or evaluate(parse_path(path), doc) == expected


@given(
    st.lists(st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), st.integers(-5, 5)), min_size=1)
)
def test_dotted_paths_round_trip(segments: list[object]) -> None:
    path = "$" + "".join(f".{s}" if isinstance(s, str) else f"[{s}]" for s in segments)
    assert parse_path(path) == tuple(segments)
