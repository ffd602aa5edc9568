"""Group commit for HTTP ingest: requests that arrive while a write is in flight share the next write.

A write to the embedded sink has a fixed cost (ledger record, key check, insert: tens of milliseconds on
the embedded engine) whatever its size, so writing once per request caps ingest at a few thousand events
per second. `GroupCommitPublisher` wraps any EventPublisher: each `publish` queues its events and waits;
one writer task drains the queue into one inner `publish` per namespace, then answers every waiter. A
request still returns only once its own events are durable, and a failed write fails every request in
it (the clients retry; the sink stores an event once per (namespace, source, id)).

The merged write carries one `ingested_at`: the latest receipt time among the requests in it (they were
all received while the previous write ran, so they differ by at most one write's duration).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from common.cloudevents import CloudEvent
from ingest.publisher import EventPublisher

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Pending:
    namespace: str
    events: Sequence[CloudEvent]
    ingested_at: datetime
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def plan_writes(pending: Sequence[_Pending], max_events: int) -> tuple[list[list[_Pending]], int]:
    """Group the head of the queue into writes, one per namespace, at most `max_events` in all (pure).

    Returns the groups (in order of first arrival) and how many queue entries they take. A single entry
    larger than `max_events` is taken alone rather than never.
    """
    groups: dict[str, list[_Pending]] = {}
    taken = total = 0
    for entry in pending:
        if taken and total + len(entry.events) > max_events:
            break
        groups.setdefault(entry.namespace, []).append(entry)
        total += len(entry.events)
        taken += 1
    return list(groups.values()), taken


class GroupCommitPublisher:
    def __init__(self, inner: EventPublisher, *, max_events: int = 10_000) -> None:
        self._inner = inner
        self._max_events = max_events
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    async def publish(self, namespace: str, events: Sequence[CloudEvent], ingested_at: datetime) -> None:
        if self._closed:
            raise RuntimeError("the publisher is closed")
        if not events:
            return
        entry = _Pending(namespace, events, ingested_at)
        # Mark a failure as seen even if the request went away before it could await it.
        entry.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append(entry)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="ingest-group-commit")
        # Shielded: a client that disconnects must not cancel a write other requests wait on.
        await asyncio.shield(entry.done)

    async def _drain(self) -> None:
        while self._queue:
            groups, taken = plan_writes(self._queue, self._max_events)
            del self._queue[:taken]
            for group in groups:
                await self._write(group)

    async def _write(self, group: list[_Pending]) -> None:
        events = [event for entry in group for event in entry.events]
        ingested_at = max(entry.ingested_at for entry in group)
        try:
            await self._inner.publish(group[0].namespace, events, ingested_at)
        except BaseException as exc:  # every waiter learns the outcome, whatever it is
            for entry in group:
                if not entry.done.done():
                    entry.done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            log.warning("group_commit_failed", namespace=group[0].namespace, requests=len(group), events=len(events))
        else:
            for entry in group:
                if not entry.done.done():
                    entry.done.set_result(None)

    async def close(self) -> None:
        """Finish the writes already queued, then close the inner publisher."""
        self._closed = True
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        await self._inner.close()
