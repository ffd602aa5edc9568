"""GroupCommitPublisher: concurrent requests share writes, and each still learns its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from common.cloudevents import CloudEvent
from ingest.group_commit import GroupCommitPublisher, _Pending, plan_writes

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def ev(i: int) -> CloudEvent:
    return CloudEvent(id=f"e{i}", source="s", type="t", subject="u", time=T0, data="null")


class SlowInner:
    """In-memory EventPublisher whose writes take a while, optionally failing."""

    def __init__(self, delay: float = 0.02, fail_on: set[int] | None = None) -> None:
        self.writes: list[tuple[str, list[str], datetime]] = []
        self.delay = delay
        self.fail_on = fail_on or set()
        self.closed = False

    async def publish(self, namespace: str, events: Sequence[CloudEvent], ingested_at: datetime) -> None:
        n = len(self.writes)
        self.writes.append((namespace, [e.id for e in events], ingested_at))
        await asyncio.sleep(self.delay)
        if n in self.fail_on:
            raise ConnectionError(f"write {n} failed")

    async def close(self) -> None:
        self.closed = True


async def test_concurrent_requests_share_writes_and_keep_every_event() -> None:
    inner = SlowInner()
    pub = GroupCommitPublisher(inner)
    await asyncio.gather(
        *(pub.publish("ns", [ev(10 * r + i) for i in range(10)], T0 + timedelta(milliseconds=r)) for r in range(20))
    )
    written = [i for _, ids, _ in inner.writes for i in ids]
    assert sorted(written) == sorted(f"e{i}" for i in range(200))
    assert len(inner.writes) <= 3  # the first request alone, then the rest together


async def test_a_request_returns_only_after_its_write() -> None:
    inner = SlowInner(delay=0.05)
    pub = GroupCommitPublisher(inner)
    await pub.publish("ns", [ev(1)], T0)
    assert inner.writes == [("ns", ["e1"], T0)]


async def test_namespaces_are_never_mixed_in_one_write() -> None:
    inner = SlowInner()
    pub = GroupCommitPublisher(inner)
    await asyncio.gather(*(pub.publish(f"ns{r % 3}", [ev(r)], T0) for r in range(30)))
    for namespace, ids, _ in inner.writes:
        assert all(int(i[1:]) % 3 == int(namespace[2:]) for i in ids)
    assert sorted(i for _, ids, _ in inner.writes for i in ids) == sorted(f"e{r}" for r in range(30))


async def test_merged_write_carries_the_latest_receipt_time() -> None:
    inner = SlowInner()
    pub = GroupCommitPublisher(inner)
    first = asyncio.create_task(pub.publish("ns", [ev(0)], T0))
    await asyncio.sleep(0)  # the first write is in flight; the next two queue behind it
    await asyncio.gather(
        pub.publish("ns", [ev(1)], T0 + timedelta(seconds=2)), pub.publish("ns", [ev(2)], T0 + timedelta(seconds=1))
    )
    await first
    assert inner.writes[1] == ("ns", ["e1", "e2"], T0 + timedelta(seconds=2))


async def test_a_failed_write_fails_every_request_in_it_and_only_those() -> None:
    inner = SlowInner(fail_on={1})
    pub = GroupCommitPublisher(inner)
    first = asyncio.create_task(pub.publish("ns", [ev(0)], T0))
    await asyncio.sleep(0)
    results = await asyncio.gather(*(pub.publish("ns", [ev(r)], T0) for r in range(1, 4)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    await first  # its own write succeeded
    await pub.publish("ns", [ev(9)], T0)  # and the publisher keeps working
    assert inner.writes[-1][1] == ["e9"]


async def test_a_cancelled_request_does_not_cancel_the_shared_write() -> None:
    inner = SlowInner(delay=0.05)
    pub = GroupCommitPublisher(inner)
    first = asyncio.create_task(pub.publish("ns", [ev(0)], T0))
    await asyncio.sleep(0)
    gone = asyncio.create_task(pub.publish("ns", [ev(1)], T0))
    stays = asyncio.create_task(pub.publish("ns", [ev(2)], T0))
    await asyncio.sleep(0.01)
    gone.cancel()
    await stays
    await first
    assert inner.writes[1][1] == ["e1", "e2"]


async def test_close_finishes_queued_writes_then_closes_inner() -> None:
    inner = SlowInner()
    pub = GroupCommitPublisher(inner)
    tasks = [asyncio.create_task(pub.publish("ns", [ev(r)], T0)) for r in range(5)]
    await asyncio.sleep(0)
    await pub.close()
    await asyncio.gather(*tasks)
    assert inner.closed
    assert len([i for _, ids, _ in inner.writes for i in ids]) == 5
    with pytest.raises(RuntimeError):
        await pub.publish("ns", [ev(7)], T0)


@pytest.mark.parametrize(
    ("sizes", "limit", "taken"),
    [([10, 10, 10], 25, 2), ([10, 10, 10], 30, 3), ([50, 1], 20, 1), ([5], 1, 1), ([], 10, 0)],
)
async def test_plan_writes_respects_the_limit(sizes: list[int], limit: int, taken: int) -> None:
    pending = [_Pending("ns", [ev(i)] * n, T0) for i, n in enumerate(sizes)]
    groups, count = plan_writes(pending, limit)
    assert count == taken
    assert sum(len(g) for g in groups) == taken
