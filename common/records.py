"""Records built once per event on hot paths: NamedTuples (0.2 us to build, against 0.4-1 us for a frozen
dataclass) that keep a dataclass's equality."""

from __future__ import annotations

from typing import Any, TypeVar

_R = TypeVar("_R", bound=tuple[Any, ...])


def equal_to_own_kind(cls: type[_R]) -> type[_R]:
    """Make a NamedTuple equal only to an instance of exactly its class, as a frozen dataclass is (a plain
    NamedTuple equals any tuple with the same items); it hashes as a tuple."""

    def equal(self: tuple[Any, ...], other: object) -> bool:
        return type(other) is cls and tuple.__eq__(self, other)

    def unequal(self: tuple[Any, ...], other: object) -> bool:
        return not equal(self, other)

    setattr(cls, "__eq__", equal)  # noqa: B010 - set on the class once it exists
    setattr(cls, "__ne__", unequal)  # noqa: B010
    setattr(cls, "__hash__", tuple.__hash__)  # noqa: B010
    return cls
