"""Publish through psycopg on PostgreSQL (``registry.db.postgres_writes``): it writes what the SQLAlchemy path writes,
leaves nothing behind when it fails, and hands a version it cannot place to the full path."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from ctpreg.registry.db import postgres_writes
from ctpreg.registry.db.engine import Database
from ctpreg.registry.db.migrate import upgrade
from ctpreg.registry.errors import DatabaseError, StoreError
from ctpreg.registry.service import PublishResult, Registry
from helpers import artifact_bytes, open_registry

pytestmark = pytest.mark.postgres

TWO_TARGETS = {
    "gptq-w3-g128": {"ppl_full": 20.0, "ppl_compressed": 40.0, "ppl_prompted": 25.0},
    "gptq-w4-g128": {"ppl_full": 20.0, "ppl_compressed": 30.0, "ppl_prompted": 24.0},
}
CASES = [  # (artifact fields, name suffix, alias)
    (dict(seed=1), "a", None),
    (dict(seed=2, task="qa"), "a", "prod"),
    (dict(seed=3, targets=TWO_TARGETS), "b", None),
    (dict(seed=4, compression="wanda-s50", metrics={"note": "no perplexities", "nested": {"x": [1, 2.5]}}), "b", None),
    (dict(seed=1), "a", "stable"),  # the same content again: the existing version, with a new alias
    (dict(seed=5, dataset="news"), "a", "prod"),  # the alias moves to the new version
]


@pytest.fixture
def registry(pg_url: str, tmp_path: Path):
    db = Database(pg_url)
    upgrade(db.engine)
    registry = open_registry(pg_url, (tmp_path / "objects").as_uri())
    registry.publish_bytes(artifact_bytes(0), name="first/p")  # registers the model (always the full path)
    yield registry
    registry.db.dispose()
    db.dispose()


def publish_cases(registry: Registry, prefix: str) -> list[PublishResult]:
    return [registry.publish_bytes(artifact_bytes(**fields), name=f"{prefix}/{suffix}", alias=alias)
            for fields, suffix, alias in CASES]


def rows(registry: Registry, prefix: str) -> dict[str, list[tuple]]:
    """Every row the publishes wrote, names without their prefix, ids as (name, version)."""
    queries = {
        "prompt": "SELECT name, version, compression, method, bits, sparsity, group_size, dataset, task, recovery,"
                  " deprecated, num_virtual_tokens, hidden_size, dtype, sha256, size_bytes, object_key,"
                  " metrics::text, training::text, created_by FROM prompt WHERE name LIKE :p ORDER BY name, version",
        "prompt_target": "SELECT t.name, t.version, p.version, t.compression, t.method, t.bits, t.sparsity,"
                         " t.group_size, t.dataset, t.task, t.recovery, t.deprecated, t.base_model_id = p.base_model_id"
                         " FROM prompt_target AS t JOIN prompt AS p ON p.id = t.prompt_id WHERE t.name LIKE :p"
                         " ORDER BY t.name, t.version, t.compression",
        "alias": "SELECT a.name, a.alias, p.name, p.version FROM alias AS a JOIN prompt AS p ON p.id = a.prompt_id"
                 " WHERE a.name LIKE :p ORDER BY a.name, a.alias",
    }
    found = {}
    with registry.db.engine.connect() as connection:
        for table, sql in queries.items():
            found[table] = [tuple(str(v).removeprefix(prefix) if isinstance(v, str) else v for v in row)
                            for row in connection.execute(sa.text(sql), {"p": f"{prefix}/%"})]
    return found


def test_the_psycopg_publish_writes_what_the_sqlalchemy_publish_writes(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(Registry, "_publish_on_postgres", lambda self, *args, **kwargs: None)
        full = publish_cases(registry, "orm")
    sent = []
    original = postgres_writes.publish_rows

    def counted(connection, **kwargs):
        sent.append(kwargs["values"]["name"])
        return original(connection, **kwargs)

    monkeypatch.setattr(postgres_writes, "publish_rows", counted)
    fast = publish_cases(registry, "pg")
    assert len(sent) == len(CASES), "every publish took the psycopg path"

    assert [r.created for r in fast] == [r.created for r in full] == [True, True, True, True, False, True]
    for a, b in zip(full, fast, strict=True):
        assert {**vars(a.prompt), "id": 0, "name": a.prompt.name[3:], "created_at": 0} == \
               {**vars(b.prompt), "id": 0, "name": b.prompt.name[2:], "created_at": 0}
    assert registry.get(fast[-1].prompt.ref) == fast[-1].prompt, "the answer is what the DB holds"
    assert fast[4].prompt.version == 1 and fast[4].prompt.aliases == ("stable",)
    assert fast[5].prompt.aliases == ("latest", "prod")
    assert rows(registry, "orm") == rows(registry, "pg")
    assert len(rows(registry, "pg")["prompt_target"]) == 6  # one per single-target prompt, two for the multi-target


def test_a_failed_publish_writes_nothing_and_releases_its_locks(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = registry.list_prompts()

    def unreachable(data: bytes):
        raise StoreError("S3 is down")

    with monkeypatch.context() as patch:
        patch.setattr(registry.store, "put_content", unreachable)
        with pytest.raises(StoreError, match="S3 is down"):
            registry.publish_bytes(artifact_bytes(7), name="t/p")
    with monkeypatch.context() as patch:
        patch.setattr(postgres_writes, "_INSERT", "SELECT 1 / 0")
        with pytest.raises(DatabaseError, match="division by zero"):
            registry.publish_bytes(artifact_bytes(8), name="t/p")
    assert registry.list_prompts() == before
    with registry.db.engine.connect() as connection:
        locks = connection.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")).scalar()
        open_transactions = connection.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in%'"
        )).scalar()
    assert locks == 0 and open_transactions == 0, "no gate, name lock or transaction outlives a failed publish"
    assert registry.publish_bytes(artifact_bytes(8), name="t/p").prompt.version == 1


def test_a_version_taken_without_the_lock_goes_to_the_full_path(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The psycopg path answers None when the name has neither a free version nor this content (a writer that
    skipped the name's lock took it); the full path, with its retries, publishes instead."""
    taken = postgres_writes._INSERT.replace(
        "(SELECT coalesce(max(version), 0) + 1 FROM prompt WHERE name = %(name)s::varchar)", "1")
    assert taken != postgres_writes._INSERT
    monkeypatch.setattr(postgres_writes, "_INSERT", taken)
    answers = []
    original = postgres_writes.publish_rows
    monkeypatch.setattr(postgres_writes, "publish_rows", lambda c, **k: answers.append(original(c, **k)) or answers[-1])
    assert registry.publish_bytes(artifact_bytes(11), name="t/q").prompt.version == 1
    second = registry.publish_bytes(artifact_bytes(12), name="t/q")
    assert answers[1] is None and second.created and second.prompt.version == 2
    assert registry.get("t/q").version == 2


def test_registries_acting_for_callers_share_one_pool(registry: Registry) -> None:
    """A server publishes through a registry acting as each caller: they must not open a pool each."""
    fresh = Registry(registry.db, registry.store, user="server")
    acting = [fresh.acting_as(f"user{i}") for i in range(3)]
    pools = {id(a._postgres_pool()) for a in acting}
    assert pools == {id(fresh._postgres_pool())}
    assert acting[0].publish_bytes(artifact_bytes(21), name="t/shared").prompt.created_by == "user0"
