"""State changes of entitlements, announced to whoever keeps something derived from them.

Every write of an entitlement's inputs (create, grant, void, reset, override, delete) publishes one
`StateChange` after its transaction committed and before the service call returns, so a listener (a value
cache, the notification watcher) has seen it before the write's HTTP response is sent. A listener's failure is
logged and never fails the write: what it derives must stay correct on its own (a cache revalidates, the
notification sweep re-evaluates).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import structlog

log = structlog.get_logger(__name__)


class ChangeKind(StrEnum):
    CREATED = "created"
    GRANT = "grant"
    VOID = "void"
    RESET = "reset"
    OVERRIDE = "override"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class StateChange:
    namespace: str
    entitlement_id: str
    subject_key: str
    kind: ChangeKind
    at: datetime  # the instant the change takes effect (a reset's or grant's effective time, else now)


Listener = Callable[[StateChange], Awaitable[None]]


class StateChanges:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def publish(self, change: StateChange) -> None:
        for listener in self._listeners:
            try:
                await listener(change)
            except Exception:
                log.exception(
                    "state_change_listener_failed",
                    entitlement_id=change.entitlement_id,
                    kind=change.kind.value,
                )
