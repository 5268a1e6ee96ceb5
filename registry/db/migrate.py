"""Alembic, driven from code: the scripts live in the ``ctpreg.migrations`` package, so an installed ctpreg can
upgrade a DB without an ``alembic.ini`` or a source checkout."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files

# ctpreg drives alembic from code and reports revisions itself; alembic's INFO lines (plugin set-up at import,
# "Running upgrade ...") would otherwise reach command output whenever a library in the process configured the root
# logger. Set before alembic is imported.
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..errors import DatabaseError, InvalidInput


def alembic_config(engine: Engine | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("ctpreg.migrations")))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations must have exactly one head, found {heads}")
    return heads[0]


def upgrade(engine: Engine, revision: str = "head") -> None:
    with _translated():
        command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    with _translated():
        command.downgrade(alembic_config(engine), revision)


@contextmanager
def _translated() -> Iterator[None]:
    """Alembic and SQLAlchemy errors become ctpreg's, so the CLI prints one line."""
    try:
        yield
    except CommandError as exc:
        raise InvalidInput(f"migration: {exc}") from exc
    except SQLAlchemyError as exc:
        raise DatabaseError(f"migration failed: {str(getattr(exc, 'orig', None) or exc).splitlines()[0]}") from exc
