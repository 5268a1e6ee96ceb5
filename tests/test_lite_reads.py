"""The read paths without SQLAlchemy (``registry.db.lite`` on SQLite, ``registry.db.postgres_reads`` on PostgreSQL)
answer resolve's queries exactly as the SQLAlchemy path does, and a cold ``ctpreg resolve`` on the embedded registry
never imports SQLAlchemy."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from ctpreg.registry.db.crud import SessionReads
from ctpreg.registry.db.engine import Database
from ctpreg.registry.db.lite import SqliteReader, sqlite_path
from ctpreg.registry.db.migrate import downgrade, upgrade
from ctpreg.registry.db.postgres_pool import PostgresPool, conninfo_for
from ctpreg.registry.db.postgres_reads import PostgresReader
from ctpreg.registry.identity import SPEC_KINDS
from ctpreg.registry.matcher import Target
from ctpreg.registry.records import Measurement
from ctpreg.registry.service import Registry
from ctpreg.registry.stores.local import LocalStore
from helpers import FP_A, RANKING_TARGETS, artifact_bytes, populate_for_ranking


@pytest.fixture
def sqlite_registry(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    db = Database(url)
    upgrade(db.engine)
    registry = Registry(db, LocalStore(tmp_path / "objects"), user="test")
    yield registry, tmp_path / "registry.db"
    registry.db.dispose()


def test_every_read_equals_the_sqlalchemy_path(sqlite_registry) -> None:
    registry, path = sqlite_registry
    rng = random.Random(11)
    populate_for_ranking(registry, rng)
    everything = [p for p in registry.list_prompts() if p.model_fingerprint == FP_A and not p.deprecated]
    for fields in RANKING_TARGETS:
        target = Target(model="m", dataset=rng.choice([None, "news"]), task=rng.choice([None, "qa"]), **fields)
        if target.spec is not None:
            for record in rng.sample(everything, 3):
                registry.record_evidence(target, record, Measurement(50.0, 40.0, "wiki", 100, ppl_full=30.0),
                                         accepted=rng.random() < 0.5)
        reader = SqliteReader.open(path)
        assert reader is not None
        try:
            with registry.db.session() as session:
                full = SessionReads(session)
                base = full.base_model("m")
                assert reader.base_model("m") == base and reader.base_model("m").id == base.id
                assert reader.base_model("nobody") is None
                for limit in (1, 5, 40, 500):
                    args = dict(target=target, model_id=base.id, fingerprint=base.fingerprint, limit=limit)
                    assert reader.top_prompts(**args) == full.top_prompts(**args), (fields, limit)
                if target.spec is not None:
                    for identity, kinds in ((None, SPEC_KINDS), ("compressed:" + "0" * 64, None)):
                        args = dict(target_model="m", target_compression=target.spec.canonical, target_key=identity,
                                    target_kinds=kinds, eval_key=None)
                        assert reader.evidence(**args) == full.evidence(**args)
                ids = {p.id for p in rng.sample(everything, 7)}
                assert reader.prompts_by_id(ids) == full.prompts_by_id(ids)
        finally:
            reader.close()


def test_the_reader_declines_what_the_full_path_must_handle(tmp_path: Path) -> None:
    assert SqliteReader.open(tmp_path / "missing.db") is None
    assert not (tmp_path / "missing.db").exists(), "a read never creates the file"
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(db.engine)
    downgrade(db.engine, "0003_evidence_identity")
    assert SqliteReader.open(tmp_path / "old.db") is None, "another schema revision: the full path upgrades or refuses"
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    assert SqliteReader.open(tmp_path / "old.db") is None
    db.dispose()
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///x.db?mode=ro", "postgresql://h/db", "sqlite:///"):
        assert sqlite_path(url) is None, url
    assert sqlite_path("sqlite:////abs/r.db") == Path("/abs/r.db")


RESOLVE_COLD = (
    "import json, sys\n"
    "from ctpreg.cli.main import main\n"
    "code = main(['resolve', '--model', 'tiny-llama', '--bits', '3', '--json'])\n"
    "print(json.dumps({'code': code, 'sqlalchemy': [m for m in sys.modules if m.startswith('sqlalchemy')]}))\n"
)


def assert_cold_resolve_without_sqlalchemy(tmp_path: Path, db_url: str | None = None) -> None:
    """Publish one prompt in one process, then resolve it in a fresh one: answered, with no SQLAlchemy module."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTPREG_")}
    env["CTPREG_HOME"] = str(tmp_path / "home")
    if db_url is not None:
        env["CTPREG_DB_URL"] = db_url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
    publish = (
        "from ctpreg.cli.main import main\n"
        "assert main(['db', 'upgrade']) == 0\n"
        "from ctpreg.registry import Registry, Settings\n"
        "from helpers import artifact_bytes\n"
        "Registry.from_settings(Settings.from_env()).publish_bytes(artifact_bytes(), name='team/p')\n"
    )
    subprocess.run([sys.executable, "-c", publish], env=env, check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-c", RESOLVE_COLD], env=env, check=True, capture_output=True,
                         text=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {"code": 0, "sqlalchemy": []}
    assert json.loads("\n".join(out.strip().splitlines()[:-1]))[0]["ref"] == "team/p:1", "answered from the registry"


def test_a_cold_resolve_never_imports_sqlalchemy(tmp_path: Path) -> None:
    assert_cold_resolve_without_sqlalchemy(tmp_path)


@pytest.mark.postgres
def test_the_one_statement_postgres_read_equals_the_sqlalchemy_path(pg_url: str, tmp_path: Path) -> None:
    """Every target shape, with and without evidence, identities and windows, at limits small enough that the
    multi-target prompts' repeated rows make the statement ask again, and large enough that the class is read."""
    db = Database(pg_url)
    upgrade(db.engine)
    registry = Registry(db, LocalStore(tmp_path / "objects"), user="test")
    rng = random.Random(12)
    populate_for_ranking(registry, rng)
    everything = [p for p in registry.list_prompts() if p.model_fingerprint == FP_A and not p.deprecated]
    reads = PostgresPool(conninfo_for(pg_url))
    windows = "0" * 64
    try:
        for fields in RANKING_TARGETS:
            for identity in (None, "compressed:" + "1" * 64):
                target = Target(model="m", dataset=rng.choice([None, "news"]), task=rng.choice([None, "qa"]),
                                identity=identity, **fields)
                if target.spec is not None:
                    for record in rng.sample(everything, 3):
                        measurement = Measurement(50.0, 40.0, "wiki", 100, ppl_full=30.0,
                                                  target_key=identity or "compressed:" + "2" * 64)
                        registry.record_evidence(target, record, measurement, accepted=rng.random() < 0.5)
                with reads.connection() as connection, db.session() as session:
                    assert connection is not None
                    reader = PostgresReader(connection)
                    full = SessionReads(session)
                    base = full.base_model("m")
                    assert reader.base_model("m") == base and reader.base_model("nobody") is None
                    for limit in (1, 3, 20, 500):
                        for eval_key in (None, windows):
                            args = dict(target=target, base=base, limit=limit, eval_key=eval_key)
                            assert reader.gather(**args) == full.gather(**args), (fields, identity, limit)
    finally:
        reads.close()
        db.dispose()


@pytest.mark.postgres
def test_a_postgres_resolve_is_one_statement(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(pg_url)
    upgrade(db.engine)
    registry = Registry(db, LocalStore(tmp_path / "objects"), user="test")
    for seed in range(5):
        registry.publish_bytes(artifact_bytes(seed, model="m", compression="gptq-w3-g128"), name=f"t/p{seed}")
    target = Target(model="m", method="gptq", bits=3)
    registry.candidates(target)  # the model's row is read once and kept
    statements: list[str] = []
    execute = psycopg.Connection.execute

    def counted(self, query, params=None, **kwargs):
        statements.append(query)
        return execute(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", counted)
    ranked = registry.candidates(target, limit=3)
    assert len(statements) == 1
    assert [c.prompt.name for c in ranked] == ["t/p0", "t/p1", "t/p2"]  # equal recovery and version: by name
    db.dispose()


@pytest.mark.postgres
def test_the_postgres_path_declines_another_schema_and_other_drivers(pg_url: str) -> None:
    db = Database(pg_url)
    upgrade(db.engine)
    downgrade(db.engine, "0003_evidence_identity")
    reads = PostgresPool(conninfo_for(pg_url))
    with reads.connection() as connection:
        assert connection is None, "another schema revision: the full path upgrades or refuses"
    assert not reads.usable
    db.dispose()
    assert conninfo_for("postgresql://h/db") is None and conninfo_for("sqlite:///x.db") is None
    without_driver = PostgresPool(conninfo_for(pg_url))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "psycopg", None)  # not installed: the full path reports it
        with without_driver.connection() as connection:
            assert connection is None and not without_driver.usable
    url = "u:p%40ss@h:5/db?options=-c%20x"
    assert conninfo_for(f"postgresql+psycopg://{url}") == f"postgresql://{url}"


@pytest.mark.postgres
def test_a_cold_resolve_on_postgres_never_imports_sqlalchemy(pg_url: str, tmp_path: Path) -> None:
    assert_cold_resolve_without_sqlalchemy(tmp_path, pg_url)
