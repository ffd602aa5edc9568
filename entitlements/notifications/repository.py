"""All notification SQL: channels, rules, events and the delivery outbox (one Session per transaction)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from entitlements.db.models import ChannelRow, DeliveryRow, EventRow, RuleRow
from entitlements.notifications.domain import Channel, Delivery, DeliveryState, Event, Rule, RuleType
from entitlements.notifications.thresholds import Threshold, ThresholdType


def channel_of(row: ChannelRow) -> Channel:
    return Channel(
        id=row.id,
        namespace=row.namespace,
        name=row.name,
        url=row.url,
        custom_headers=dict(row.custom_headers),
        signing_secret=row.signing_secret,
        disabled=row.disabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
        deleted_at=row.deleted_at,
    )


def threshold_of(raw: dict[str, str]) -> Threshold:
    return Threshold(ThresholdType(raw["type"]), Decimal(raw["value"]))


def threshold_row(t: Threshold) -> dict[str, str]:
    return {"type": t.type.value, "value": format(t.value, "f")}


def rule_of(row: RuleRow) -> Rule:
    return Rule(
        id=row.id,
        namespace=row.namespace,
        type=RuleType(row.type),
        name=row.name,
        disabled=row.disabled,
        thresholds=tuple(threshold_of(t) for t in row.thresholds),
        features=tuple(row.features),
        channels=tuple(row.channels),
        created_at=row.created_at,
        updated_at=row.updated_at,
        deleted_at=row.deleted_at,
    )


def delivery_of(row: DeliveryRow) -> Delivery:
    return Delivery(
        channel_id=row.channel_id,
        state=DeliveryState(row.status),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        history=tuple(row.history),
        updated_at=row.updated_at,
    )


def event_of(row: EventRow, deliveries: Sequence[DeliveryRow] = ()) -> Event:
    return Event(
        id=row.id,
        namespace=row.namespace,
        type=RuleType(row.type),
        rule_id=row.rule_id,
        created_at=row.created_at,
        payload=orjson.loads(row.payload),
        entitlement_id=row.entitlement_id,
        subject_key=row.subject_key,
        feature_key=row.feature_key,
        deliveries=tuple(delivery_of(d) for d in deliveries),
    )


class NotificationRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # ---- channels ----

    def channel(self, namespace: str, channel_id: str, *, include_deleted: bool = False) -> ChannelRow | None:
        row = self.session.get(ChannelRow, channel_id)
        if row is None or row.namespace != namespace or (row.deleted_at is not None and not include_deleted):
            return None
        return row

    def channels(
        self, namespace: str, *, ids: Sequence[str] = (), include_deleted: bool = False, limit: int, offset: int
    ) -> tuple[list[ChannelRow], int]:
        where = [ChannelRow.namespace == namespace]
        if ids:
            where.append(ChannelRow.id.in_(list(ids)))
        if not include_deleted:
            where.append(ChannelRow.deleted_at.is_(None))
        total = self.session.scalar(select(func.count()).select_from(ChannelRow).where(*where)) or 0
        rows = self.session.scalars(
            select(ChannelRow).where(*where).order_by(ChannelRow.created_at, ChannelRow.id).limit(limit).offset(offset)
        ).all()
        return list(rows), int(total)

    # ---- rules ----

    def rule(self, namespace: str, rule_id: str, *, include_deleted: bool = False) -> RuleRow | None:
        row = self.session.get(RuleRow, rule_id)
        if row is None or row.namespace != namespace or (row.deleted_at is not None and not include_deleted):
            return None
        return row

    def rules(
        self,
        namespace: str,
        *,
        types: Sequence[str] = (),
        include_disabled: bool = True,
        include_deleted: bool = False,
        limit: int,
        offset: int,
    ) -> tuple[list[RuleRow], int]:
        where = [RuleRow.namespace == namespace]
        if types:
            where.append(RuleRow.type.in_(list(types)))
        if not include_disabled:
            where.append(RuleRow.disabled.is_(False))
        if not include_deleted:
            where.append(RuleRow.deleted_at.is_(None))
        total = self.session.scalar(select(func.count()).select_from(RuleRow).where(*where)) or 0
        rows = self.session.scalars(
            select(RuleRow).where(*where).order_by(RuleRow.created_at, RuleRow.id).limit(limit).offset(offset)
        ).all()
        return list(rows), int(total)

    def active_rules(self, namespace: str, rule_type: RuleType) -> list[Rule]:
        rows = self.session.scalars(
            select(RuleRow).where(
                RuleRow.namespace == namespace,
                RuleRow.type == rule_type.value,
                RuleRow.disabled.is_(False),
                RuleRow.deleted_at.is_(None),
            )
        ).all()
        return [rule_of(r) for r in rows]

    def namespaces_with_rules(self, rule_type: RuleType) -> list[str]:
        rows = self.session.scalars(
            select(RuleRow.namespace)
            .where(RuleRow.type == rule_type.value, RuleRow.disabled.is_(False), RuleRow.deleted_at.is_(None))
            .distinct()
        ).all()
        return list(rows)

    # ---- events ----

    def last_thresholds(self, rule_id: str, entitlement_id: str, period_start: datetime) -> dict[str, Threshold]:
        """The threshold of the newest event of each kind for this rule, entitlement and period."""
        out: dict[str, Threshold] = {}
        for kind in ("usage", "balance"):
            row = self.session.scalars(
                select(EventRow)
                .where(
                    EventRow.rule_id == rule_id,
                    EventRow.entitlement_id == entitlement_id,
                    EventRow.period_start == period_start,
                    EventRow.kind == kind,
                )
                .order_by(EventRow.created_at.desc(), EventRow.id.desc())
                .limit(1)
            ).first()
            if row is not None and row.threshold is not None:
                out[kind] = threshold_of(row.threshold)
        return out

    def has_event(self, dedupe_key: str) -> bool:
        return self.session.scalar(select(EventRow.id).where(EventRow.dedupe_key == dedupe_key)) is not None

    def add_event(self, row: EventRow, channel_ids: Sequence[str], now: datetime) -> None:
        self.session.add(row)
        self.session.flush()
        for channel_id in channel_ids:
            self.session.add(
                DeliveryRow(
                    event_id=row.id,
                    channel_id=channel_id,
                    status=DeliveryState.PENDING.value,
                    attempts=0,
                    next_attempt_at=now,
                    history=[],
                    updated_at=now,
                )
            )
        self.session.flush()

    def event(self, namespace: str, event_id: str) -> Event | None:
        row = self.session.get(EventRow, event_id)
        if row is None or row.namespace != namespace:
            return None
        deliveries = self.session.scalars(select(DeliveryRow).where(DeliveryRow.event_id == event_id)).all()
        return event_of(row, deliveries)

    def events(
        self,
        namespace: str,
        *,
        rule_ids: Sequence[str] = (),
        feature_keys: Sequence[str] = (),
        subject_keys: Sequence[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        delivery_states: Sequence[str] = (),
        limit: int,
        offset: int,
    ) -> tuple[list[Event], int]:
        where: list[Any] = [EventRow.namespace == namespace]
        if rule_ids:
            where.append(EventRow.rule_id.in_(list(rule_ids)))
        if feature_keys:
            where.append(EventRow.feature_key.in_(list(feature_keys)))
        if subject_keys:
            where.append(EventRow.subject_key.in_(list(subject_keys)))
        if since is not None:
            where.append(EventRow.created_at >= since)
        if until is not None:
            where.append(EventRow.created_at < until)
        if delivery_states:
            where.append(
                EventRow.id.in_(select(DeliveryRow.event_id).where(DeliveryRow.status.in_(list(delivery_states))))
            )
        total = self.session.scalar(select(func.count()).select_from(EventRow).where(*where)) or 0
        rows = self.session.scalars(
            select(EventRow)
            .where(*where)
            .order_by(EventRow.created_at.desc(), EventRow.id.desc())
            .limit(limit)
            .offset(offset)
        ).all()
        ids = [r.id for r in rows]
        deliveries: dict[str, list[DeliveryRow]] = {}
        if ids:
            for d in self.session.scalars(select(DeliveryRow).where(DeliveryRow.event_id.in_(ids))).all():
                deliveries.setdefault(d.event_id, []).append(d)
        return [event_of(r, deliveries.get(r.id, ())) for r in rows], int(total)

    # ---- the outbox ----

    def claim_due(self, now: datetime, lease_until: datetime, limit: int, *, lock_rows: bool) -> list[DeliveryRow]:
        """Due deliveries (pending and due, or sending with an expired lease), leased to the caller.

        On PostgreSQL the rows are locked with SKIP LOCKED, so replicas claim disjoint sets; SQLite
        serialises writers. The lease makes a crashed sender's delivery due again, under the same event id.
        """
        query = (
            select(DeliveryRow)
            .where(
                or_(
                    and_(DeliveryRow.status == DeliveryState.PENDING.value, DeliveryRow.next_attempt_at <= now),
                    and_(DeliveryRow.status == DeliveryState.SENDING.value, DeliveryRow.next_attempt_at <= now),
                )
            )
            .order_by(DeliveryRow.next_attempt_at)
            .limit(limit)
        )
        if lock_rows:
            query = query.with_for_update(skip_locked=True)
        rows = list(self.session.scalars(query).all())
        for row in rows:
            row.status = DeliveryState.SENDING.value
            row.attempts += 1
            row.next_attempt_at = lease_until
            row.updated_at = now
        self.session.flush()
        return rows

    def delivery(self, event_id: str, channel_id: str) -> DeliveryRow | None:
        return self.session.get(DeliveryRow, (event_id, channel_id))

    def event_row(self, event_id: str) -> EventRow | None:
        return self.session.get(EventRow, event_id)
