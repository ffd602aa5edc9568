"""Settings of notification evaluation and delivery (`METERGATE_NOTIFICATIONS__*`)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field

from entitlements.notifications.dispatcher import DeliveryPolicy


class NotificationSettings(BaseModel):
    enabled: bool = Field(default=True, description="evaluate rules and deliver webhooks in this process")
    sweep_interval_seconds: float = Field(
        default=60, ge=1, le=86400, description="re-evaluate every covered entitlement this often (safety net)"
    )
    max_attempts: int = Field(default=8, ge=1, le=100, description="delivery tries before an event is FAILED")
    first_backoff_seconds: float = Field(default=1, gt=0, le=3600, description="wait after the first failure")
    max_backoff_seconds: float = Field(default=600, gt=0, le=86400, description="backoff doubles up to this")
    request_timeout_seconds: float = Field(default=10, gt=0, le=120, description="per webhook request")
    lease_seconds: float = Field(
        default=60, gt=0, le=3600, description="a claimed delivery is retried (same id) if not marked by then"
    )

    def policy(self) -> DeliveryPolicy:
        return DeliveryPolicy(
            max_attempts=self.max_attempts,
            first_backoff=timedelta(seconds=self.first_backoff_seconds),
            max_backoff=timedelta(seconds=self.max_backoff_seconds),
            request_timeout=timedelta(seconds=self.request_timeout_seconds),
            lease=timedelta(seconds=max(self.lease_seconds, self.request_timeout_seconds * 2)),
        )
