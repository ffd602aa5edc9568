"""Bring the entitlement database to the latest schema: called by `metergate migrate` and at `dev` start."""

from __future__ import annotations

from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def upgrade_database(url: str) -> None:
    """Idempotent: applies only the migrations the database lacks."""
    command.upgrade(alembic_config(url), "head")
    log.info("entitlement_schema_ready", dialect=url.split(":", 1)[0])
