"""Alembic environment and revisions of the ctpreg metadata DB (run them with ``ctpreg db upgrade``)."""
