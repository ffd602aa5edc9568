"""Service settings: each service composes the sections it needs. Built once at start-up, passed down.

Environment variables: METERGATE_<FIELD>, nested with a double underscore, e.g.
METERGATE_CLICKHOUSE__URL, METERGATE_KAFKA__BOOTSTRAP_SERVERS, METERGATE_AUTH__API_KEYS='{"key": "ns"}'.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import AwareDatetime, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.settings import AuthSettings, ClickHouseSettings, DatabaseSettings, KafkaSettings, LogSettings
from entitlements.notifications.settings import NotificationSettings
from entitlements.quotas import QuotaSettings
from ingest.settings import SinkSettings, WorkerSettings
from metergate.server import ServerSettings

__all__ = ["ApiServiceSettings", "MigrateSettings", "WorkerSettings"]

_CONFIG = SettingsConfigDict(env_prefix="METERGATE_", env_nested_delimiter="__", extra="forbid", validate_default=True)


class ApiServiceSettings(BaseSettings):
    """`metergate api` and `metergate dev` (dev also runs the sink in-process)."""

    model_config = _CONFIG

    host: str = "127.0.0.1"
    port: int = Field(default=8888, ge=0, le=65535)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, description="request body limit (413 past it)")
    meters_file: Path | None = Field(default=None, description="YAML file of meters loaded at start")
    meter_roll_seconds: float = Field(
        default=1.0, gt=0, le=3600, description="how often the meter roller rolls the stored events up"
    )
    clock_frozen_at: AwareDatetime | None = Field(
        default=None,
        description="test only: freeze the service clock here (one clock for every namespace); "
        "moved with POST /api/v1/debug/clock",
    )
    allow_frozen_clock: bool = Field(
        default=False, description="allow a frozen clock with auth on and a non-loopback address (tests only)"
    )
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    quotas: QuotaSettings = Field(default_factory=QuotaSettings)

    def frozen_at(self) -> datetime | None:
        return self.clock_frozen_at


class MigrateSettings(BaseSettings):
    """`metergate migrate`: ClickHouse tables and rollups, entitlement database schema, Kafka topics."""

    model_config = _CONFIG

    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    meters_file: Path | None = None
    retry_seconds: float = Field(
        default=120, ge=0, description="how long each step retries a server that is not reachable yet, then fails"
    )
