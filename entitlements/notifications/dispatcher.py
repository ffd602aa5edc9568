"""Delivers the outbox: at least once, signed (Standard Webhooks), with backoff and a bounded number of tries.

A delivery is claimed with a lease (PostgreSQL: SKIP LOCKED, so replicas claim disjoint rows), sent, then
marked. A crash after sending and before marking lets the lease expire: the delivery is sent again under the
same `webhook-id` (the event id), never a new one, so receivers deduplicate. A slow or dead receiver costs
only its own request timeout: deliveries run concurrently, evaluation never waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook

from entitlements.db.models import ChannelRow, DeliveryRow
from entitlements.notifications.domain import DeliveryState
from entitlements.notifications.repository import NotificationRepository, channel_of
from entitlements.service.deps import Deps

log = structlog.get_logger(__name__)

MAX_REASON = 300


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    max_attempts: int = 8
    first_backoff: timedelta = timedelta(seconds=1)
    max_backoff: timedelta = timedelta(minutes=10)
    request_timeout: timedelta = timedelta(seconds=10)
    lease: timedelta = timedelta(seconds=60)
    batch: int = 50
    poll_interval: timedelta = timedelta(seconds=1)

    def __post_init__(self) -> None:
        if self.lease <= self.request_timeout:
            # A lease that can run out while its request is still in flight lets a second dispatcher send the
            # same delivery although nothing crashed.
            raise ValueError("the delivery lease must be longer than the request timeout")

    def backoff(self, attempts: int) -> timedelta:
        """Exponential: first_backoff x 2^(attempts-1), capped."""
        backoff: timedelta = self.first_backoff * (2 ** max(attempts - 1, 0))
        return min(backoff, self.max_backoff)


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    status_code: int | None
    reason: str | None
    duration_ms: int


def signed_headers(event_id: str, secret: str, body: str, at: datetime) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, at, body),
    }


class Dispatcher:
    def __init__(
        self, deps: Deps, policy: DeliveryPolicy | None = None, client: httpx.AsyncClient | None = None
    ) -> None:
        self.deps = deps
        self.policy = policy or DeliveryPolicy()
        self._client = client
        self._own_client = client is None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._round: asyncio.Future[int] | None = None

    def wake(self) -> None:
        """New outbox rows: deliver now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        self._task = asyncio.create_task(self._loop(), name="notification-dispatcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._round is not None:
            with contextlib.suppress(Exception):
                await self._round
            self._round = None
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _loop(self) -> None:
        while True:
            # Shielded: close() cancels the loop between rounds, never inside one (a round holds database
            # connections in threads; the database may be closed right after).
            self._round = asyncio.ensure_future(self.run_once())
            try:
                sent = await asyncio.shield(self._round)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notification_dispatch_failed")
                sent = 0
            if sent:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.policy.poll_interval.total_seconds())

    async def run_once(self) -> int:
        """Claim the due deliveries and send them concurrently; returns how many were attempted."""
        now = self.deps.wall_clock.now()

        def claim(session: Session) -> list[tuple[str, str]]:
            rows = NotificationRepository(session).claim_due(
                now, now + self.policy.lease, self.policy.batch, lock_rows=self.deps.db.locks_rows
            )
            return [(r.event_id, r.channel_id) for r in rows]

        claimed = await self.deps.writing(claim)
        await asyncio.gather(*(self._deliver(event_id, channel_id) for event_id, channel_id in claimed))
        return len(claimed)

    async def _deliver(self, event_id: str, channel_id: str) -> None:
        def load(session: Session) -> tuple[Any, str] | None:
            repo = NotificationRepository(session)
            event = repo.event_row(event_id)
            row = session.get(ChannelRow, channel_id)
            if event is None or row is None:
                return None
            return channel_of(row), event.payload

        loaded = await self.deps.reading(load)
        if loaded is None:
            outcome = Outcome(False, None, "the event or its channel no longer exists", 0)
            await self._mark(event_id, channel_id, outcome, final=True)
            return
        channel, body = loaded
        if channel.deleted_at is not None or channel.disabled:
            outcome = Outcome(False, None, "the channel is disabled or deleted", 0)
            await self._mark(event_id, channel_id, outcome, final=True)
            return
        outcome = await self._post(event_id, channel.url, channel.signing_secret, channel.custom_headers, body)
        await self._mark(event_id, channel_id, outcome, final=False)

    async def _post(self, event_id: str, url: str, secret: str, custom: dict[str, str], body: str) -> Outcome:
        assert self._client is not None
        headers = {**custom, **signed_headers(event_id, secret, body, self.deps.wall_clock.now())}
        started = time.monotonic()
        try:
            response = await self._client.post(
                url, content=body.encode(), headers=headers, timeout=self.policy.request_timeout.total_seconds()
            )
        except httpx.HTTPError as exc:
            elapsed = int((time.monotonic() - started) * 1000)
            return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:MAX_REASON], elapsed)
        elapsed = int((time.monotonic() - started) * 1000)
        if 200 <= response.status_code < 300:
            return Outcome(True, response.status_code, None, elapsed)
        return Outcome(False, response.status_code, f"HTTP {response.status_code}: {response.text[:200]}", elapsed)

    async def _mark(self, event_id: str, channel_id: str, outcome: Outcome, *, final: bool) -> None:
        now = self.deps.wall_clock.now()

        def tx(session: Session) -> DeliveryRow | None:
            row = NotificationRepository(session).delivery(event_id, channel_id)
            if row is None:
                return None
            attempt = {
                "at": now.isoformat().replace("+00:00", "Z"),
                "success": outcome.ok,
                "statusCode": outcome.status_code,
                "reason": outcome.reason,
                "durationMs": outcome.duration_ms,
            }
            row.history = [*row.history, attempt]
            row.updated_at = now
            if outcome.ok:
                row.status = DeliveryState.SUCCESS.value
            elif final or row.attempts >= self.policy.max_attempts:
                row.status = DeliveryState.FAILED.value
            else:
                row.status = DeliveryState.PENDING.value
                row.next_attempt_at = now + self.policy.backoff(row.attempts)
            session.flush()
            return row

        row = await self.deps.writing(tx)
        if row is not None:
            log.info(
                "notification_delivery",
                event_id=event_id,
                channel_id=channel_id,
                state=row.status,
                attempt=row.attempts,
                status_code=outcome.status_code,
                reason=outcome.reason,
            )
