"""Settings pieces. Each service composes the sections it needs into its own BaseSettings
(see metergate/settings.py); settings are built once at start-up and passed down, never imported
as a global.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator


class ClickHouseSettings(BaseModel):
    """`url` unset means the embedded engine (chdb) in `path`; set it for a ClickHouse server."""

    url: str | None = Field(default=None, description="http(s)://user:password@host:8123 of a server")
    path: Path = Field(default=Path(".metergate/clickhouse"), description="chdb data folder (embedded)")
    database: str = Field(default="metergate", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @property
    def embedded(self) -> bool:
        return self.url is None


class KafkaSettings(BaseModel):
    """`bootstrap_servers` unset means no broker: HTTP ingest feeds the sink in-process."""

    bootstrap_servers: str | None = None
    events_topic: str = "om_events"
    dead_letter_topic: str = "om_events_dlq"
    topic_partitions: int = Field(default=8, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    client_id: str = "metergate"
    events_retention_days: int = Field(
        default=35,
        ge=1,
        description="retention `metergate migrate` sets on the events topic: it holds the only copy of accepted "
        "events until the sink writes them, so keep it past the sink's dedupe window (32 days) and any outage",
    )
    notifications_topic: str = Field(
        default="om_notifications",
        description="ingest notifications and entitlement state changes, followed by every API process",
    )
    notifications_retention_hours: int = Field(default=24, ge=1)


class DatabaseSettings(BaseModel):
    """Entitlement state: SQLite in the embedded default, PostgreSQL in production."""

    url: str = "sqlite:///.metergate/state.db"


class LogSettings(BaseModel):
    format: str = Field(default="console", pattern="^(console|json)$")
    level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")


NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


# Words the example files use in placeholder secrets: a key containing one was copied, not generated.
PLACEHOLDER_MARKERS = ("replace-me", "change-me", "changeme")


class AuthSettings(BaseModel):
    """API keys map to namespaces. With auth off every request acts in `default_namespace`."""

    enabled: bool = True
    api_keys: dict[str, str] = Field(default_factory=dict, description='JSON object {"<api key>": "<namespace>"}')
    default_namespace: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]{1,64}$")

    @field_validator("api_keys")
    @classmethod
    def _keys_are_usable(cls, value: dict[str, str]) -> dict[str, str]:
        for key, namespace in value.items():
            if len(key) < 16:
                raise ValueError("an API key must be at least 16 characters long")
            if any(marker in key.lower() for marker in PLACEHOLDER_MARKERS):
                raise ValueError("an API key is still a placeholder (from .env.example): generate a random one")
            # The same rule as the sink's namespace header: a namespace HTTP accepts must be storable.
            if not NAMESPACE_PATTERN.fullmatch(namespace):
                raise ValueError(f"namespace {namespace!r} must be 1 to 64 characters of [A-Za-z0-9_-]")
        return value

    def secret_keys(self) -> dict[SecretStr, str]:
        return {SecretStr(k): v for k, v in self.api_keys.items()}
