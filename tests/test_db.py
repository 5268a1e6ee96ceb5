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


OLD_ROW_TIME = "2026-11-29 00:00:00+00:00"


def _insert_old_rows(conn, metrics: list[str]) -> None:
    """A base model and one prompt version per ``metrics`` JSON, written as SQL (older revisions have no ORM)."""
    conn.execute(text(
        "INSERT INTO base_model (name, fingerprint, hidden_size, created_at) VALUES ('m', 'sha256:x', 8, :now)"
    ), {"now": OLD_ROW_TIME})
    for i, values in enumerate(metrics):
        conn.execute(text(
            "INSERT INTO prompt (name, version, base_model_id, compression, method, bits, dataset, num_virtual_tokens,"
            " hidden_size, dtype, sha256, size_bytes, object_key, metrics, training, created_at, created_by,"
            " deprecated)"
            " VALUES ('p', :v, 1, 'gptq-w3-g128', 'gptq', 3, 'wiki', 4, 8, 'float32', :sha, 1, 'k', :metrics, '{}',"
            " :now, 't', false)"
        ), {"v": i + 1, "sha": f"{i:064x}", "metrics": values, "now": OLD_ROW_TIME})


def _insert_old_evidence(conn, **identity: str) -> None:
    """One evidence row (gptq-w4-g128, 40 -> 30) for prompt 1, with the identity columns the revision has."""
    columns = "".join(f", {name}" for name in identity)
    values = "".join(f", :{name}" for name in identity)
    conn.execute(text(
        "INSERT INTO transfer_result (prompt_id, target_model_id, target_compression, eval_dataset, eval_tokens,"
        f" ppl_without, ppl_with, relative_gain, accepted, measured_at{columns})"
        f" VALUES (1, 1, 'gptq-w4-g128', 'news/validation', 5000, 40.0, 30.0, 0.25, true, :now{values})"
    ), {"now": OLD_ROW_TIME, **identity})


def test_upgrade_to_0002_fills_recovery_from_metrics(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    upgrade(db.engine, "0001_initial")
    with db.engine.begin() as conn:
        _insert_old_rows(conn, ['{"ppl_full": 20, "ppl_compressed": 40, "ppl_prompted": 25}', "{}"])
    upgrade(db.engine)
    with db.engine.connect() as conn:
        values = conn.execute(text("SELECT recovery FROM prompt ORDER BY version")).scalars().all()
    assert values[0] == pytest.approx(0.75) and values[1] is None
    downgrade(db.engine, "0001_initial")
    upgrade(db.engine)
    db.dispose()


def test_upgrade_to_0003_keeps_old_evidence_labelled_legacy(empty_db_url: str) -> None:
    from ctpreg.registry.matcher import Target
    from ctpreg.registry.service import Registry
    from ctpreg.registry.stores.local import LocalStore

    db = Database(empty_db_url)
    upgrade(db.engine, "0002_prompt_recovery")
    with db.engine.begin() as conn:
        _insert_old_rows(conn, ["{}"])
        _insert_old_evidence(conn)
    upgrade(db.engine)
    with db.engine.connect() as conn:
        row = conn.execute(text("SELECT target_key, eval_key, ppl_with FROM transfer_result")).one()
    assert tuple(row) == ("legacy", "legacy:news/validation", 30.0)
    registry = Registry(Database(empty_db_url), LocalStore(Path("/nonexistent-store")))
    [old] = registry.evidence("m")
    assert old.measurement.eval_key == "legacy:news/validation" and old.measurement.eval_data is None
    assert "windows not recorded" in old.measurement.describe_data()
    spec_target = Target(model="m", method="gptq", bits=4)
    assert registry.candidates(spec_target)[0].tier == 1, "old evidence still serves a resolve by spec"
    checkpoint = Target(model="m", method="gptq", bits=4, identity="checkpoint:" + "a" * 64)
    assert registry.candidates(checkpoint)[0].tier != 1, "but is never taken for a measurement on a user's checkpoint"
    prompt = registry.get("p:1")
    registry.record_evidence(checkpoint, prompt, old.measurement.__class__(40.0, 20.0, "mine", 100), accepted=True)
    registry.db.dispose()
    downgrade(db.engine, "0002_prompt_recovery")
    with db.engine.connect() as conn:  # the checkpoint's row would read as evidence for every gptq-w4 model there
        assert conn.execute(text("SELECT ppl_with FROM transfer_result")).scalars().all() == [30.0]
    upgrade(db.engine)
    db.dispose()


def test_upgrade_to_0004_keeps_evidence_without_a_full_figure(empty_db_url: str) -> None:
    from ctpreg.registry.service import Registry
    from ctpreg.registry.stores.local import LocalStore

    db = Database(empty_db_url)
    upgrade(db.engine, "0003_evidence_identity")
    with db.engine.begin() as conn:
        _insert_old_rows(conn, ["{}"])
        _insert_old_evidence(conn, target_key="legacy", eval_key="legacy:news/validation")
    upgrade(db.engine)
    registry = Registry(Database(empty_db_url), LocalStore(Path("/nonexistent-store")))
    [old] = registry.evidence("m")
    assert old.measurement.ppl_with == 30.0 and old.measurement.ppl_full is None
    registry.db.dispose()
    downgrade(db.engine, "0003_evidence_identity")
    with db.engine.connect() as conn:
        assert "ppl_full" not in conn.execute(text("SELECT * FROM transfer_result")).keys()
        assert conn.execute(text("SELECT ppl_with FROM transfer_result")).scalars().all() == [30.0]
    upgrade(db.engine)
    db.dispose()


def test_aliases_are_read_in_batches_so_long_lists_stay_under_the_parameter_limit(
    registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL binds at most 65,535 parameters: listing 100,000 prompts once failed there. Batches of 2 here."""
    from ctpreg.registry.db import crud
    from helpers import artifact_bytes

    for i in range(5):
        registry.publish_bytes(artifact_bytes(seed=i), name=f"team/p{i}")
    monkeypatch.setattr(crud, "ALIAS_BATCH", 2)
    listed = registry.list_prompts()
    assert len(listed) == 5 and all(record.aliases == ("latest",) for record in listed)
