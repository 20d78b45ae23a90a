"""Alembic migrations: the only way the catalogue's schema changes."""
