"""Alembic environment: runs online against the engine ctpreg passes in (``config.attributes["engine"]``).

SQLite gets ``render_as_batch`` so later ALTERs work through table copies.
"""

from alembic import context
from sqlmodel import SQLModel

from ctpreg.registry.db import models  # noqa: F401  (registers the tables on SQLModel.metadata for autogenerate)

target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    engine = context.config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("ctpreg migrations run online only: use `ctpreg db upgrade`")
run_migrations_online()
