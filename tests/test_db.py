"""Schema: Alembic upgrade/downgrade on both backends, one head, models == migrations, revision guard."""

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from ctpreg.registry.db import models  # noqa: F401
from ctpreg.registry.db.engine import SCHEMA_REVISION, Database
from ctpreg.registry.db.migrate import downgrade, head_revision, upgrade
from ctpreg.registry.errors import SchemaOutOfDate

TABLES = {"base_model", "prompt", "alias", "transfer_result"}


def test_code_expects_the_single_head() -> None:
    assert head_revision() == SCHEMA_REVISION


def test_upgrade_from_empty_then_downgrade_to_base(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    upgrade(db.engine)
    with db.engine.connect() as conn:
        assert TABLES <= set(inspect(conn).get_table_names())
    assert db.current_revision() == SCHEMA_REVISION
    downgrade(db.engine, "base")
    with db.engine.connect() as conn:
        assert not TABLES & set(inspect(conn).get_table_names())
    upgrade(db.engine)
    assert db.current_revision() == SCHEMA_REVISION
    db.dispose()


def test_models_and_migrations_agree(db_url: str) -> None:
    db = Database(db_url)
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
    db.dispose()
    assert diff == []


def test_empty_db_is_refused_unless_embedded(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    with pytest.raises(SchemaOutOfDate, match="ctpreg db upgrade"):
        db.check_schema()
    db.dispose()


def test_db_behind_the_code_names_the_command(db_url: str) -> None:
    db = Database(db_url)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000_older'"))
    with pytest.raises(SchemaOutOfDate, match=r"revision 0000_older.*run `ctpreg db upgrade`"):
        db.check_schema()
    db.dispose()


def test_embedded_sqlite_upgrades_itself_on_first_use(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'new' / 'registry.db'}", auto_upgrade_empty=True)
    with db.session() as session:
        assert session.execute(text("SELECT count(*) FROM prompt")).scalar() == 0
    assert db.current_revision() == SCHEMA_REVISION
    db.dispose()
