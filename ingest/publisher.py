"""The port HTTP ingest publishes to: Kafka in production, the embedded in-process log otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from common.cloudevents import CloudEvent


class EventPublisher(Protocol):
    async def publish(self, namespace: str, events: Sequence[CloudEvent], ingested_at: datetime) -> None:
        """Durably accept the events (all of them, or raise). Returning means they will be stored."""
        ...

    async def close(self) -> None: ...
