"""Metadata DB: SQLModel rows (``models``), engine and sessions (``engine``), queries (``crud``),
Alembic (``migrate``)."""
