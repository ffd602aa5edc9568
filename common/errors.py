"""One root error, a few categories, each saying whether a retry can help.

Domain errors subclass a category and carry fields. The HTTP layer maps categories to status codes in
one table (`common.http.STATUS_BY_CATEGORY`); nothing else decides a status code.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MetergateError(Exception):
    """Root of every error Metergate raises on purpose."""

    retryable: ClassVar[bool] = False
    title: ClassVar[str] = "Error"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields: dict[str, Any] = fields

    def __str__(self) -> str:
        if not self.fields:
            return self.message
        extra = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"{self.message} ({extra})"


class InvalidInput(MetergateError):
    title = "Bad Request"


class Unauthenticated(MetergateError):
    title = "Unauthorized"


class Forbidden(MetergateError):
    title = "Forbidden"


class NotFound(MetergateError):
    title = "Not Found"


class Conflict(MetergateError):
    title = "Conflict"


class PayloadTooLarge(InvalidInput):
    title = "Payload Too Large"


class HeadersTooLarge(InvalidInput):
    title = "Request Header Fields Too Large"


class UnsupportedMediaType(InvalidInput):
    title = "Unsupported Media Type"


class Unavailable(MetergateError):
    """A dependency (Kafka, ClickHouse, the database) cannot be reached right now."""

    retryable = True
    title = "Service Unavailable"
