"""The Services container: every adapter the HTTP routers use, built once from settings at start-up.

Routers reach it through `services_of(request)` (stored on `app.state.services`), so a test can build a
Services around its own ClickHouse database and publisher and hand it to `metergate.app.create_app`.

Extending it (a new service): add a typed field with a default of None below, build it in
`build_services` (it may register a closer with `services.on_close`), and include the router in
`metergate.app.ROUTERS`. Close order is the reverse of registration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog
from fastapi import Request

from common.clickhouse import ClickHouse, connect_clickhouse
from common.clock import Clock, FrozenClock, SystemClock
from common.ingest_notifications import InProcessNotifier
from ingest.events_reader import ClickHouseEventsReader
from ingest.http import EventValidationHook
from ingest.publisher import EventPublisher

if TYPE_CHECKING:
    from aggregator.service import MeterService
    from entitlements.notifications.http import Notifications
    from entitlements.service import Entitlements
    from ingest.notification_stream import KafkaNotificationFollower, KafkaNotificationPublisher
    from metergate.settings import ApiServiceSettings

log = structlog.get_logger(__name__)


Closer = Callable[[], Awaitable[None]]


@dataclass
class Services:
    clickhouse: ClickHouse
    publisher: EventPublisher
    clock: Clock
    events_reader: ClickHouseEventsReader
    max_body_bytes: int = 1024 * 1024
    event_validation: EventValidationHook | None = None
    meters: MeterService | None = None
    entitlements: Entitlements | None = None
    notifications: Notifications | None = None
    # The ingest notification stream this process follows (in-process when the sink is embedded here), or,
    # with Kafka, the notification topic's follower and this process's publisher of state changes.
    ingest_notifier: InProcessNotifier | None = None
    notification_follower: KafkaNotificationFollower | None = None
    notification_publisher: KafkaNotificationPublisher | None = None
    _closers: list[Closer] = field(default_factory=list, repr=False)

    def on_close(self, closer: Closer) -> None:
        self._closers.append(closer)

    async def close(self) -> None:
        while self._closers:
            closer = self._closers.pop()
            try:
                await closer()
            except Exception:
                log.exception("service_close_failed", closer=getattr(closer, "__qualname__", repr(closer)))


def clock_from(settings: ApiServiceSettings) -> Clock:
    frozen_at = settings.frozen_at()
    if frozen_at is None:
        return SystemClock()
    log.warning("test_clock_frozen", at=frozen_at.isoformat())
    return FrozenClock(frozen_at)


async def publisher_from(
    settings: ApiServiceSettings, clickhouse: ClickHouse, clock: Clock, notifier: InProcessNotifier | None = None
) -> EventPublisher:
    """Kafka when a broker is configured; otherwise the in-process log that feeds the sink directly."""
    if settings.kafka.bootstrap_servers is not None:
        from ingest.kafka_publisher import KafkaEventPublisher

        publisher = KafkaEventPublisher(settings.kafka)
        await publisher.start()
        return publisher
    from ingest.sink.embedded import EmbeddedLog

    # EmbeddedLog group-commits: concurrent requests share one write (its fixed cost), each answered after it.
    # Its write-ahead file lives with the chdb data it guards (one owner); a server keeps the ledger table.
    ch = settings.clickhouse
    wal_path = ch.path / "embedded-wal" / f"{ch.database}.wal" if ch.embedded else None
    embedded = EmbeddedLog(clickhouse, settings.sink, clock=clock, wal_path=wal_path, notifier=notifier)
    await embedded.start()
    return embedded


async def build_services(settings: ApiServiceSettings, *, clickhouse: ClickHouse | None = None) -> Services:
    """Open every adapter the API needs. The caller owns the result and must `await services.close()`.

    Pass `clickhouse` to reuse an engine already open (the embedded one allows one folder per process).
    """
    if clickhouse is None:
        clickhouse = await asyncio.to_thread(connect_clickhouse, settings.clickhouse)
    closers: list[Closer] = []
    if not clickhouse.embedded:
        closers.append(lambda: asyncio.to_thread(clickhouse.close))
    clock = clock_from(settings)
    notifier = InProcessNotifier() if settings.kafka.bootstrap_servers is None else None
    try:
        publisher = await publisher_from(settings, clickhouse, clock, notifier)
    except BaseException:
        for closer in reversed(closers):
            await closer()
        raise
    services = Services(
        clickhouse=clickhouse,
        publisher=publisher,
        clock=clock,
        events_reader=ClickHouseEventsReader(clickhouse),
        max_body_bytes=settings.max_body_bytes,
        ingest_notifier=notifier,
        _closers=closers,
    )
    services.on_close(publisher.close)
    try:
        if settings.kafka.bootstrap_servers is not None:
            await _build_notification_stream(services, settings)
        meters = await _build_meters(services, settings)
        await _build_entitlements(services, settings, meters)
        if settings.notifications.enabled:
            await _build_notifications(services, settings)
        if services.notification_follower is not None:
            await services.notification_follower.start()  # every listener is attached by now
            services.on_close(services.notification_follower.close)
    except BaseException:
        await services.close()  # nothing opened so far leaks
        raise
    return services


async def _build_notification_stream(services: Services, settings: ApiServiceSettings) -> None:
    """With Kafka: this process publishes its state changes (and a tick every second) to the notification
    topic, and follows the topic for the sink workers' ingest notifications and the other API processes'
    changes (ingest.notification_stream). The follower starts once every listener is attached."""
    from aiokafka import AIOKafkaProducer

    from ingest.notification_stream import KafkaNotificationFollower, KafkaNotificationPublisher

    kafka = settings.kafka
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-notifications",
        acks="all",
        enable_idempotence=False,
        linger_ms=0,
    )
    await producer.start()
    services.on_close(producer.stop)
    publisher = KafkaNotificationPublisher(producer, kafka.notifications_topic, tick_interval=1.0)
    await publisher.start()
    services.on_close(publisher.close)
    services.notification_publisher = publisher
    services.notification_follower = KafkaNotificationFollower(kafka, own_stream=publisher.stream)


async def _build_meters(services: Services, settings: ApiServiceSettings) -> MeterService:
    """Meters (aggregator): the live meters, the query API and the events listing's validation hook.

    `metergate migrate` (run first by `metergate dev`) builds the rollups; here they are only read.
    """
    from aggregator.config import load_config
    from aggregator.repository import ClickHouseMeterRepository
    from aggregator.service import MeterService

    meters = MeterService(
        ClickHouseMeterRepository(services.clickhouse),
        config_meters=load_config(settings.meters_file),
        clock=services.clock,
        max_meters=settings.quotas.meters_per_namespace,
        roll_seconds=settings.meter_roll_seconds,
    )
    await meters.load()
    services.on_close(meters.close)  # backfills running here stop; the next start resumes them
    services.meters = meters
    services.event_validation = meters.event_validation_error
    return meters


async def _build_entitlements(services: Services, settings: ApiServiceSettings, meters: MeterService) -> None:
    """Entitlements: state in settings.database (migrated by `metergate migrate`), usage from the meters.

    The feature service becomes the meters' MeterUseGuard: a meter a feature uses cannot be deleted.
    """
    from aggregator.usage import ClickHouseUsageReader
    from entitlements.cache.store import BalanceCache
    from entitlements.service import build_entitlements

    # The balance cache needs every state change and every committed batch: in-process when the sink and chdb
    # are embedded here (the only API process: one chdb owner); with Kafka, from the notification topic, which
    # also carries the other API processes' changes. Until the follower sees its own first tick (and whenever
    # it loses sight of the topic) the cache is suspended: every read computes.
    notifier = services.ingest_notifier
    follower = services.notification_follower
    cache = None
    if (notifier is not None and services.clickhouse.embedded) or follower is not None:
        cache = BalanceCache()
    if follower is not None and cache is not None:
        cache.suspend()
        follower.usage_listeners.append(cache.on_ingest)
        follower.change_listeners.append(cache.on_changes)
        follower.blind_listeners.append(cache.suspend)
        follower.sight_listeners.append(cache.resume)

    entitlements = await asyncio.to_thread(
        build_entitlements,
        settings.database.url,
        meters=meters,
        usage=ClickHouseUsageReader(meters),
        clock=services.clock,
        cache=cache,
        quotas=settings.quotas,
    )
    if notifier is not None and cache is not None:
        notifier.subscribe(cache.on_ingest)
    if services.notification_publisher is not None:
        entitlements.deps.change_listeners.append(services.notification_publisher.change)
    meters.set_guard(entitlements.features)
    meters.set_customers(entitlements.customers)
    meters.set_catalog_lock(entitlements.deps.db)  # API replicas on one PostgreSQL change meters one at a time
    meters.start_rolling()  # only now: every roll holds the shared lock (one replica rolls at a time)
    services.entitlements = entitlements
    services.on_close(lambda: asyncio.to_thread(entitlements.close))
    services.on_close(meters.stop_rolling)  # closers run last-registered first: rolls stop before the database


async def _build_notifications(services: Services, settings: ApiServiceSettings) -> None:
    """Notification rules, their evaluation (watcher) and the webhook outbox dispatcher, started here."""
    from entitlements.notifications.dispatcher import Dispatcher
    from entitlements.notifications.http import Notifications
    from entitlements.notifications.service import NotificationService
    from entitlements.notifications.watcher import NotificationWatcher

    assert services.entitlements is not None
    service = NotificationService(services.entitlements)
    dispatcher = Dispatcher(services.entitlements.deps, settings.notifications.policy())
    watcher = NotificationWatcher(
        service,
        sweep_interval=timedelta(seconds=settings.notifications.sweep_interval_seconds),
        on_events=dispatcher.wake,
    )
    await dispatcher.start()
    services.on_close(dispatcher.close)
    await watcher.start()
    services.on_close(watcher.close)
    # Evaluate whenever a value can change: every committed state change of a subject's entitlements, and
    # every committed ingest batch (the stream the balance cache follows: in-process, or the Kafka topic,
    # where every API process evaluates; the events' dedupe keys make one webhook of them).
    services.entitlements.deps.change_listeners.append(watcher.subject_changed)
    if services.ingest_notifier is not None:
        services.ingest_notifier.subscribe(watcher.on_ingest)
    if services.notification_follower is not None:
        services.notification_follower.usage_listeners.append(watcher.on_ingest)
    services.notifications = Notifications(service=service, watcher=watcher, dispatcher=dispatcher)


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
