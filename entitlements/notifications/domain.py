"""Notification channels, rules and events: the stored values, their API shapes and their errors."""

from __future__ import annotations

import base64
import enum
import os
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from common.errors import InvalidInput, NotFound
from entitlements.notifications.thresholds import Threshold, ThresholdType

MAX_THRESHOLDS = 10
MAX_CHANNELS_PER_RULE = 10
MAX_FEATURES_PER_RULE = 100
MAX_HEADERS = 20


class RuleType(enum.StrEnum):
    BALANCE_THRESHOLD = "entitlements.balance.threshold"
    RESET = "entitlements.reset"


class DeliveryState(enum.StrEnum):
    PENDING = "PENDING"
    SENDING = "SENDING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


class ChannelNotFound(NotFound):
    def __init__(self, channel_id: str) -> None:
        super().__init__(f"notification channel {channel_id!r} not found")
        self.channel_id = channel_id


class RuleNotFound(NotFound):
    def __init__(self, rule_id: str) -> None:
        super().__init__(f"notification rule {rule_id!r} not found")
        self.rule_id = rule_id


class EventNotFound(NotFound):
    def __init__(self, event_id: str) -> None:
        super().__init__(f"notification event {event_id!r} not found")
        self.event_id = event_id


def new_signing_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass(frozen=True, slots=True)
class Channel:
    id: str
    namespace: str
    name: str
    url: str
    custom_headers: dict[str, str]
    signing_secret: str
    disabled: bool
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None

    def to_api(self, *, with_secret: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "type": "WEBHOOK",
            "name": self.name,
            "url": self.url,
            "customHeaders": self.custom_headers,
            "disabled": self.disabled,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }
        if with_secret:
            out["signingSecret"] = self.signing_secret
        if self.deleted_at is not None:
            out["deletedAt"] = self.deleted_at
        return out

    def meta(self) -> dict[str, Any]:
        return {"id": self.id, "type": "WEBHOOK", "name": self.name}


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    namespace: str
    type: RuleType
    name: str
    disabled: bool
    thresholds: tuple[Threshold, ...]
    features: tuple[str, ...]  # feature ids or keys as given; empty = every feature
    channels: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None

    def applies_to(self, feature_id: str, feature_key: str) -> bool:
        return not self.features or feature_id in self.features or feature_key in self.features

    def to_api(self, channels: dict[str, Channel]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "type": self.type.value,
            "name": self.name,
            "disabled": self.disabled,
            "channels": [channels[c].meta() if c in channels else {"id": c, "type": "WEBHOOK"} for c in self.channels],
            "features": [{"id": f} for f in self.features],
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }
        if self.type is RuleType.BALANCE_THRESHOLD:
            out["thresholds"] = [t.to_api() for t in self.thresholds]
        if self.deleted_at is not None:
            out["deletedAt"] = self.deleted_at
        return out


@dataclass(frozen=True, slots=True)
class Delivery:
    channel_id: str
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime
    history: tuple[dict[str, Any], ...]
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    namespace: str
    type: RuleType
    rule_id: str
    created_at: datetime
    payload: dict[str, Any]
    entitlement_id: str | None = None
    subject_key: str | None = None
    feature_key: str | None = None
    deliveries: tuple[Delivery, ...] = field(default=())


# ---- request bodies ----


def _str(body: dict[str, Any], name: str, *, required: bool, max_len: int) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidInput(f"{name} is required", field=name)
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string", field=name)
    if len(value) > max_len:
        raise InvalidInput(f"{name} is longer than {max_len} characters", field=name)
    return value


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false", field=name)
    return value


def _ids(body: dict[str, Any], name: str, *, required: bool, max_items: int) -> tuple[str, ...]:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidInput(f"{name} is required", field=name)
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidInput(f"{name} must be a list of ids", field=name)
    if required and not value:
        raise InvalidInput(f"{name} must name at least one", field=name)
    if len(value) > max_items:
        raise InvalidInput(f"{name} lists more than {max_items}", field=name)
    return tuple(dict.fromkeys(value))


@dataclass(frozen=True, slots=True)
class ChannelInput:
    name: str
    url: str
    custom_headers: dict[str, str]
    signing_secret: str | None
    disabled: bool

    @classmethod
    def parse(cls, body: object) -> ChannelInput:
        if not isinstance(body, dict):
            raise InvalidInput("a channel must be a JSON object", field=None)
        kind = body.get("type")
        if kind != "WEBHOOK":
            raise InvalidInput("type must be WEBHOOK (the only channel type)", field="type")
        name = _str(body, "name", required=True, max_len=256)
        url = _str(body, "url", required=True, max_len=2048)
        assert name is not None
        assert url is not None
        if not url.startswith(("http://", "https://")):
            raise InvalidInput("url must be an http:// or https:// URL", field="url")
        headers = body.get("customHeaders") or {}
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "\n" not in k + v and "\r" not in k + v
            for k, v in headers.items()
        ):
            raise InvalidInput("customHeaders must map header names to string values", field="customHeaders")
        if len(headers) > MAX_HEADERS:
            raise InvalidInput(f"customHeaders has more than {MAX_HEADERS} headers", field="customHeaders")
        reserved = sorted(k for k in headers if k.lower().startswith("webhook-") or k.lower() == "content-type")
        if reserved:
            raise InvalidInput(f"customHeaders cannot set {reserved[0]} (set by the signature)", field="customHeaders")
        secret = _str(body, "signingSecret", required=False, max_len=128)
        if secret is not None:
            try:
                raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
            except ValueError as exc:
                raise InvalidInput("signingSecret must be whsec_ followed by base64", field="signingSecret") from exc
            if len(raw) < 24:
                raise InvalidInput("signingSecret must hold at least 24 random bytes", field="signingSecret")
        return cls(name, url, dict(headers), secret, _bool(body, "disabled"))


@dataclass(frozen=True, slots=True)
class RuleInput:
    type: RuleType
    name: str
    disabled: bool
    thresholds: tuple[Threshold, ...]
    features: tuple[str, ...]
    channels: tuple[str, ...]

    @classmethod
    def parse(cls, body: object) -> RuleInput:
        if not isinstance(body, dict):
            raise InvalidInput("a rule must be a JSON object", field=None)
        try:
            kind = RuleType(str(body.get("type")))
        except ValueError as exc:
            allowed = ", ".join(t.value for t in RuleType)
            raise InvalidInput(f"type must be one of {allowed}", field="type") from exc
        name = _str(body, "name", required=True, max_len=256)
        assert name is not None
        thresholds: tuple[Threshold, ...] = ()
        if kind is RuleType.BALANCE_THRESHOLD:
            thresholds = parse_thresholds(body.get("thresholds"))
        return cls(
            kind,
            name,
            _bool(body, "disabled"),
            thresholds,
            _ids(body, "features", required=False, max_items=MAX_FEATURES_PER_RULE),
            _ids(body, "channels", required=True, max_items=MAX_CHANNELS_PER_RULE),
        )


def parse_thresholds(value: object) -> tuple[Threshold, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidInput("thresholds must be a non-empty list", field="thresholds")
    if len(value) > MAX_THRESHOLDS:
        raise InvalidInput(f"at most {MAX_THRESHOLDS} thresholds per rule", field="thresholds")
    out: list[Threshold] = []
    for i, item in enumerate(value):
        where = f"thresholds[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where} must be an object with type and value", field=where)
        try:
            kind = ThresholdType(str(item.get("type")))
        except ValueError as exc:
            allowed = ", ".join(t.value for t in ThresholdType)
            raise InvalidInput(f"{where}.type must be one of {allowed}", field=where) from exc
        raw = item.get("value")
        if isinstance(raw, bool) or not isinstance(raw, int | float | str | Decimal):
            raise InvalidInput(f"{where}.value must be a number", field=where)
        try:
            amount = Decimal(str(raw))
        except InvalidOperation as exc:
            raise InvalidInput(f"{where}.value must be a number", field=where) from exc
        if not amount.is_finite() or amount < 0 or amount.adjusted() > 30:
            raise InvalidInput(f"{where}.value must be a finite number >= 0 below 1e31", field=where)
        threshold = Threshold(kind, amount)
        if any(t.type.canonical is kind.canonical and t.value == amount for t in out):
            raise InvalidInput(f"{where} repeats a threshold", field=where)
        out.append(threshold)
    return tuple(out)
