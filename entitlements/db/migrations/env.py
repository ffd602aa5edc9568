"""Alembic environment, driven programmatically by `entitlements.db.migrate.upgrade_database`.

The URL arrives in `config.attributes["url"]` (never through the .ini, so '%' in passwords is safe).
Versions live in their own table so the entitlement schema can share a database with other tools.
"""

from __future__ import annotations

from alembic import context

from entitlements.db.models import Base
from entitlements.db.session import make_engine

VERSION_TABLE = "entitlements_alembic_version"


def run_migrations_online() -> None:
    url = context.config.attributes.get("url") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL given to the entitlement migrations")
    engine = make_engine(str(url))
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                version_table=VERSION_TABLE,
                render_as_batch=connection.dialect.name == "sqlite",
                transaction_per_migration=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported; run `metergate migrate`")
run_migrations_online()
