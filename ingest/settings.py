"""Settings of the sink worker (the Kafka -> ClickHouse path) and of the embedded log."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.settings import ClickHouseSettings, KafkaSettings, LogSettings


class SinkSettings(BaseModel):
    consumer_group: str = "metergate-sink"
    batch_size: int = Field(default=10_000, ge=1, le=1_000_000, description="max events per write")
    batch_timeout_ms: int = Field(default=500, ge=1, description="flush a partial batch after this long")
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    retry_backoff_initial_ms: int = Field(default=200, ge=1)
    retry_backoff_max_ms: int = Field(default=10_000, ge=1)
    dedupe_window_days: int = Field(
        default=32,
        ge=1,
        description="copies of a key stored within this many days are one event, whatever their event times",
    )
    default_namespace: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="namespace of events published straight to the topic without a namespace header",
    )
    max_partition_fetch_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus metrics on this port (/metrics); 0 turns them off"
    )

    def dedupe_window(self) -> timedelta:
        return timedelta(days=self.dedupe_window_days)


class WorkerSettings(BaseSettings):
    """`metergate ingest-worker` / `python -m ingest.sink`: Kafka -> ClickHouse. Here, not in metergate/, so
    the worker's own entry point needs nothing above ingest."""

    model_config = SettingsConfigDict(
        env_prefix="METERGATE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    log: LogSettings = Field(default_factory=LogSettings)
