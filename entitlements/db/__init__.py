"""Entitlement state in SQL: SQLAlchemy 2 models, one repository per aggregate, Alembic migrations."""
