"""Channels, rules and events (CRUD), and the evaluation that decides an event: the shell around
`thresholds.py`. Every decision and its outbox rows are written in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.errors import InvalidInput, NotFound
from entitlements.db.models import ChannelRow, EventRow, RuleRow
from entitlements.db.repositories import ResetRepository
from entitlements.domain import Entitlement, EntitlementType, Reset, new_id
from entitlements.notifications import thresholds
from entitlements.notifications.domain import (
    Channel,
    ChannelInput,
    ChannelNotFound,
    Event,
    EventNotFound,
    Rule,
    RuleInput,
    RuleNotFound,
    RuleType,
    new_signing_secret,
)
from entitlements.notifications.repository import NotificationRepository, channel_of, rule_of, threshold_row
from entitlements.schemas import encode
from entitlements.service import Entitlements

log = structlog.get_logger(__name__)

MAX_PAGE = 1000


def payload_bytes(payload: dict[str, Any]) -> str:
    """The webhook body: the API's own JSON (exact decimal numbers, RFC 3339 UTC instants)."""
    return encode(payload).decode()


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    total: int


class NotificationService:
    def __init__(self, entitlements: Entitlements) -> None:
        self.ent = entitlements
        self.deps = entitlements.deps

    # ---- channels ----

    async def create_channel(self, namespace: str, spec: ChannelInput) -> Channel:
        now = self.deps.clock.now()

        def tx(session: Session) -> Channel:
            row = ChannelRow(
                id=new_id(),
                namespace=namespace,
                type="WEBHOOK",
                name=spec.name,
                url=spec.url,
                custom_headers=spec.custom_headers,
                signing_secret=spec.signing_secret or new_signing_secret(),
                disabled=spec.disabled,
                created_at=now,
                updated_at=now,
                deleted_at=None,
            )
            session.add(row)
            session.flush()
            return channel_of(row)

        return await self.deps.writing(tx)

    async def update_channel(self, namespace: str, channel_id: str, spec: ChannelInput) -> Channel:
        now = self.deps.clock.now()

        def tx(session: Session) -> Channel:
            row = NotificationRepository(session).channel(namespace, channel_id)
            if row is None:
                raise ChannelNotFound(channel_id)
            row.name, row.url, row.custom_headers, row.disabled = (
                spec.name,
                spec.url,
                spec.custom_headers,
                spec.disabled,
            )
            if spec.signing_secret is not None:
                row.signing_secret = spec.signing_secret
            row.updated_at = now
            session.flush()
            return channel_of(row)

        return await self.deps.writing(tx)

    async def get_channel(self, namespace: str, channel_id: str) -> Channel:
        def tx(session: Session) -> Channel:
            row = NotificationRepository(session).channel(namespace, channel_id, include_deleted=True)
            if row is None:
                raise ChannelNotFound(channel_id)
            return channel_of(row)

        return await self.deps.reading(tx)

    async def delete_channel(self, namespace: str, channel_id: str) -> None:
        now = self.deps.clock.now()

        def tx(session: Session) -> None:
            repo = NotificationRepository(session)
            row = repo.channel(namespace, channel_id)
            if row is None:
                raise ChannelNotFound(channel_id)
            rules, _ = repo.rules(namespace, limit=MAX_PAGE, offset=0)
            using = sorted(r.id for r in rules if channel_id in r.channels)
            if using:
                raise InvalidInput(
                    f"channel {channel_id!r} is used by rule(s) {', '.join(using)}: remove it from them first",
                    field="channelId",
                )
            row.deleted_at = now
            row.updated_at = now

        await self.deps.writing(tx)

    async def list_channels(self, namespace: str, *, include_deleted: bool, limit: int, offset: int) -> Page:
        def tx(session: Session) -> Page:
            rows, total = NotificationRepository(session).channels(
                namespace, include_deleted=include_deleted, limit=min(limit, MAX_PAGE), offset=offset
            )
            return Page([channel_of(r) for r in rows], total)

        return await self.deps.reading(tx)

    # ---- rules ----

    def _check_channels(self, repo: NotificationRepository, namespace: str, ids: Sequence[str]) -> None:
        found, _ = repo.channels(namespace, ids=ids, limit=len(ids), offset=0)
        missing = sorted(set(ids) - {r.id for r in found})
        if missing:
            raise InvalidInput(f"channel {missing[0]!r} does not exist in this namespace", field="channels")

    async def create_rule(self, namespace: str, spec: RuleInput) -> Rule:
        now = self.deps.clock.now()

        def tx(session: Session) -> Rule:
            repo = NotificationRepository(session)
            self._check_channels(repo, namespace, spec.channels)
            row = RuleRow(
                id=new_id(),
                namespace=namespace,
                type=spec.type.value,
                name=spec.name,
                disabled=spec.disabled,
                thresholds=[threshold_row(t) for t in spec.thresholds],
                features=list(spec.features),
                channels=list(spec.channels),
                created_at=now,
                updated_at=now,
                deleted_at=None,
            )
            session.add(row)
            session.flush()
            return rule_of(row)

        return await self.deps.writing(tx)

    async def update_rule(self, namespace: str, rule_id: str, spec: RuleInput) -> Rule:
        now = self.deps.clock.now()

        def tx(session: Session) -> Rule:
            repo = NotificationRepository(session)
            row = repo.rule(namespace, rule_id)
            if row is None:
                raise RuleNotFound(rule_id)
            if row.type != spec.type.value:
                raise InvalidInput("a rule's type cannot change: create a new rule", field="type")
            self._check_channels(repo, namespace, spec.channels)
            row.name, row.disabled = spec.name, spec.disabled
            row.thresholds = [threshold_row(t) for t in spec.thresholds]
            row.features, row.channels = list(spec.features), list(spec.channels)
            row.updated_at = now
            session.flush()
            return rule_of(row)

        return await self.deps.writing(tx)

    async def get_rule(self, namespace: str, rule_id: str) -> Rule:
        def tx(session: Session) -> Rule:
            row = NotificationRepository(session).rule(namespace, rule_id, include_deleted=True)
            if row is None:
                raise RuleNotFound(rule_id)
            return rule_of(row)

        return await self.deps.reading(tx)

    async def delete_rule(self, namespace: str, rule_id: str) -> None:
        now = self.deps.clock.now()

        def tx(session: Session) -> None:
            row = NotificationRepository(session).rule(namespace, rule_id)
            if row is None:
                raise RuleNotFound(rule_id)
            row.deleted_at = now
            row.updated_at = now

        await self.deps.writing(tx)

    async def list_rules(
        self, namespace: str, *, include_disabled: bool, include_deleted: bool, limit: int, offset: int
    ) -> Page:
        def tx(session: Session) -> Page:
            rows, total = NotificationRepository(session).rules(
                namespace,
                include_disabled=include_disabled,
                include_deleted=include_deleted,
                limit=min(limit, MAX_PAGE),
                offset=offset,
            )
            return Page([rule_of(r) for r in rows], total)

        return await self.deps.reading(tx)

    async def channels_by_id(self, namespace: str, ids: Sequence[str]) -> dict[str, Channel]:
        if not ids:
            return {}

        def tx(session: Session) -> dict[str, Channel]:
            rows, _ = NotificationRepository(session).channels(
                namespace, ids=ids, include_deleted=True, limit=len(ids), offset=0
            )
            return {r.id: channel_of(r) for r in rows}

        return await self.deps.reading(tx)

    # ---- events ----

    async def get_event(self, namespace: str, event_id: str) -> Event:
        def tx(session: Session) -> Event:
            found = NotificationRepository(session).event(namespace, event_id)
            if found is None:
                raise EventNotFound(event_id)
            return found

        return await self.deps.reading(tx)

    async def list_events(self, namespace: str, *, limit: int, offset: int, **filters: Any) -> Page:
        def tx(session: Session) -> Page:
            items, total = NotificationRepository(session).events(
                namespace, limit=min(limit, MAX_PAGE), offset=offset, **filters
            )
            return Page(list(items), total)

        return await self.deps.reading(tx)

    def _record(self, namespace: str, rule: Rule, row: EventRow) -> bool:
        """Write one event and its outbox rows; False if its dedupe key exists (another evaluator won)."""
        now = self.deps.wall_clock.now()
        try:
            with self.deps.db.write() as session:
                repo = NotificationRepository(session)
                if repo.has_event(row.dedupe_key):
                    return False
                channels, _ = repo.channels(namespace, ids=rule.channels, limit=len(rule.channels), offset=0)
                repo.add_event(row, [c.id for c in channels if not c.disabled], now)
        except IntegrityError:
            return False
        log.info("notification_event_created", namespace=namespace, rule_id=rule.id, event_id=row.id, type=row.type)
        return True

    async def _record_async(self, namespace: str, rule: Rule, row: EventRow) -> bool:
        return await self.deps.in_thread(lambda: self._record(namespace, rule, row))

    async def send_test(self, namespace: str, rule_id: str) -> Event:
        """A test event for the rule, delivered like any other (its payload says it is a test)."""
        rule = await self.get_rule(namespace, rule_id)
        now = self.deps.clock.now()
        event_id = new_id()
        payload = {
            "id": event_id,
            "type": rule.type.value,
            "timestamp": now,
            "test": True,
            "data": {"rule": {"id": rule.id, "name": rule.name}},
        }
        row = EventRow(
            id=event_id,
            namespace=namespace,
            type=rule.type.value,
            rule_id=rule.id,
            dedupe_key=f"test:{event_id}",
            payload=payload_bytes(payload),
            created_at=self.deps.wall_clock.now(),
        )
        await self.deps.in_thread(lambda: self._record(namespace, rule, row))
        return await self.get_event(namespace, event_id)

    # ---- evaluation ----

    async def evaluate(self, namespace: str, entitlement: Entitlement) -> int:
        """Evaluate every active threshold rule that covers the entitlement; returns the events created."""
        if entitlement.type is not EntitlementType.METERED or entitlement.deleted_at is not None:
            return 0

        def rules_tx(session: Session) -> tuple[list[Rule], list[Reset]]:
            repo = NotificationRepository(session)
            rules = repo.active_rules(namespace, RuleType.BALANCE_THRESHOLD)
            rules += repo.active_rules(namespace, RuleType.RESET)
            resets = ResetRepository(session).for_entitlement(entitlement.id) if rules else []
            return rules, resets

        all_rules, resets = await self.deps.reading(rules_tx)
        covering = [r for r in all_rules if r.applies_to(entitlement.feature_id, entitlement.feature_key)]
        created = await self._reset_events(
            namespace, entitlement, [r for r in covering if r.type is RuleType.RESET], resets
        )
        rules = [r for r in covering if r.type is RuleType.BALANCE_THRESHOLD]
        if not rules:
            return created
        now = self.deps.clock.now()
        try:
            value = await self.ent.balances.value(namespace, entitlement.owner_ref, entitlement.id, now)
        except NotFound:
            return 0
        period = (await self.ent.balances.periods([entitlement], now)).get(entitlement.id)
        if period is None or value.balance is None:
            return created
        reading = thresholds.Reading(
            balance=value.balance,
            usage=value.usage or Decimal(0),
            overage=value.overage or Decimal(0),
            total_available=value.total_available_grant_amount or Decimal(0),
        )
        for rule in rules:
            selection = thresholds.select(rule.thresholds, reading)
            if selection.usage is None and selection.balance is None:
                continue

            def last_tx(rule: Rule = rule) -> dict[str, thresholds.Threshold]:
                with self.deps.db.read() as session:
                    return NotificationRepository(session).last_thresholds(rule.id, entitlement.id, period.start)

            for threshold in thresholds.due(selection, await self.deps.in_thread(last_tx)):
                event_id = new_id()
                payload = {
                    "id": event_id,
                    "type": RuleType.BALANCE_THRESHOLD.value,
                    "timestamp": now,
                    "data": {
                        "rule": {"id": rule.id, "name": rule.name},
                        "entitlement": {
                            "id": entitlement.id,
                            "featureKey": entitlement.feature_key,
                            "featureId": entitlement.feature_id,
                            "subjectKey": entitlement.subject_key,
                            "currentUsagePeriod": {"from": period.start, "to": period.end},
                        },
                        "feature": {"id": entitlement.feature_id, "key": entitlement.feature_key},
                        "subject": {"key": entitlement.subject_key},
                        **_customer(entitlement),
                        "threshold": threshold.to_api(),
                        "value": {
                            "hasAccess": value.has_access,
                            "balance": value.balance,
                            "usage": value.usage,
                            "overage": value.overage,
                            "totalAvailableGrantAmount": value.total_available_grant_amount,
                        },
                    },
                }
                row = EventRow(
                    id=event_id,
                    namespace=namespace,
                    type=RuleType.BALANCE_THRESHOLD.value,
                    rule_id=rule.id,
                    entitlement_id=entitlement.id,
                    subject_key=entitlement.subject_key,
                    feature_key=entitlement.feature_key,
                    period_start=period.start,
                    kind=threshold.type.kind,
                    threshold=threshold_row(threshold),
                    dedupe_key=thresholds.dedupe_key(
                        rule.id, entitlement.id, int(period.start.timestamp() * 1000), threshold
                    ),
                    payload=payload_bytes(payload),
                    created_at=self.deps.wall_clock.now(),
                )
                if await self._record_async(namespace, rule, row):
                    created += 1
        return created

    async def _reset_events(
        self, namespace: str, entitlement: Entitlement, rules: Sequence[Rule], resets: Sequence[Reset]
    ) -> int:
        """`entitlements.reset` events: one per rule, entitlement and manual reset made after the rule existed.

        Derived from the stored resets (not from a hook), so a reset is announced even if the process that
        made it died before telling anyone: the next evaluation (or the sweep) finds it; the dedupe key makes
        every later evaluation a no-op."""
        created = 0
        for rule, reset in ((r, x) for r in rules for x in resets if x.created_at >= r.created_at):
            effective_at = reset.effective_at
            event_id = new_id()
            payload = {
                "id": event_id,
                "type": RuleType.RESET.value,
                "timestamp": self.deps.clock.now(),
                "data": {
                    "rule": {"id": rule.id, "name": rule.name},
                    "entitlement": {"id": entitlement.id, "featureKey": entitlement.feature_key},
                    "feature": {"id": entitlement.feature_id, "key": entitlement.feature_key},
                    "subject": {"key": entitlement.subject_key},
                    **_customer(entitlement),
                    "resetAt": effective_at,
                },
            }
            row = EventRow(
                id=event_id,
                namespace=namespace,
                type=RuleType.RESET.value,
                rule_id=rule.id,
                entitlement_id=entitlement.id,
                subject_key=entitlement.subject_key,
                feature_key=entitlement.feature_key,
                period_start=effective_at,
                dedupe_key=f"reset:{rule.id}:{entitlement.id}:{int(effective_at.timestamp() * 1000)}",
                payload=payload_bytes(payload),
                created_at=self.deps.wall_clock.now(),
            )
            if await self._record_async(namespace, rule, row):
                created += 1
        return created


def _customer(entitlement: Entitlement) -> dict[str, Any]:
    """A customer's entitlement names its customer (its `subject.key` is then the customer's id)."""
    return {} if entitlement.customer_id is None else {"customer": {"id": entitlement.customer_id}}
