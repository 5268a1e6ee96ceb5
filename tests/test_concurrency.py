"""Many writers, one name: PostgreSQL + S3 over HTTP (moto server), real processes."""

import multiprocessing

import pytest
from sqlalchemy import create_engine, text

from ctpreg.registry.digest import sha256_hex
from helpers import open_registry, publish_worker

WORKERS, EACH = 8, 25


@pytest.mark.postgres
def test_concurrent_publishers_get_distinct_consecutive_versions(
    pg_url: str, s3_bucket: str, moto_endpoint: str
) -> None:
    from ctpreg.registry.db.engine import Database
    from ctpreg.registry.db.migrate import upgrade

    db = Database(pg_url)
    upgrade(db.engine)
    db.dispose()
    store_url = f"s3://{s3_bucket}/many"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(WORKERS) as pool:
        results = pool.starmap(
            publish_worker, [(pg_url, store_url, moto_endpoint, w, EACH, "shared/name") for w in range(WORKERS)]
        )
    versions = sorted(v for worker in results for v in worker)
    assert versions == list(range(1, WORKERS * EACH + 1))

    registry = open_registry(pg_url, store_url, moto_endpoint)
    records = registry.list_prompts()
    assert len(records) == WORKERS * EACH
    for record in records:
        assert sha256_hex(registry.store.get_verified(record.object_key, record.sha256)) == record.sha256
    assert registry.get("shared/name").version == WORKERS * EACH, "latest must end on the highest version"
    registry.db.dispose()
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(DISTINCT version) FROM prompt")).scalar() == WORKERS * EACH
    engine.dispose()


def test_concurrent_publishers_on_sqlite(tmp_path) -> None:
    from ctpreg.registry.db.engine import Database
    from ctpreg.registry.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'r.db'}"
    db = Database(url)
    upgrade(db.engine)
    db.dispose()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(publish_worker, [(url, (tmp_path / "o").as_uri(), None, w, 10, "n") for w in range(4)])
    assert sorted(v for worker in results for v in worker) == list(range(1, 41))


def test_concurrent_deprecates_leave_latest_on_the_newest_live_version(db_url: str, tmp_path) -> None:
    """Deprecating v3 and v2 at once: the second waits for the first's decision, so latest ends on v1."""
    import threading

    from ctpreg.registry.db import crud
    from helpers import artifact_bytes

    registry = open_registry(db_url, (tmp_path / "store").as_uri())
    for seed in (1, 2, 3):
        registry.publish_bytes(artifact_bytes(seed), name="race/p")
    v2, v3 = registry.get("race/p:2"), registry.get("race/p:3")
    finished = threading.Event()

    def deprecate_v2() -> None:
        with registry.db.session(write=True) as session:
            crud.deprecate(session, prompt=v2)
        finished.set()

    with registry.db.session(write=True) as session:
        crud.deprecate(session, prompt=v3)
        other = threading.Thread(target=deprecate_v2)
        other.start()
        assert not finished.wait(1.0), "the second deprecate decided without waiting for the first"
    other.join(30)
    assert finished.is_set() and registry.get("race/p").version == 1
    registry.db.dispose()


class _CommitAfter:
    """A psycopg connection whose publish pipeline runs everything before ``COMMIT``, then ``between()``, then
    commits: the window in which the publish's rows exist but are not committed."""

    def __init__(self, connection, between) -> None:
        self._connection, self._between = connection, between

    def __getattr__(self, name):
        return getattr(self._connection, name)

    def execute(self, query, params=None, **kwargs):
        if query == "COMMIT":
            with self._connection.pipeline() as pipeline:
                pipeline.sync()  # the lock and the insert have run; the transaction is still open
            self._between()
        return self._connection.execute(query, params, **kwargs)


@pytest.mark.postgres
@pytest.mark.parametrize("path", ["sqlalchemy", "psycopg"])
def test_publish_racing_deprecate_leaves_latest_on_the_new_version(
    pg_url: str, tmp_path, monkeypatch, path: str
) -> None:
    """A deprecate that starts while a publish of v4 is uncommitted must not move latest back to v2 (PostgreSQL:
    on SQLite the two write transactions cannot overlap at all), on both publish paths."""
    from ctpreg.registry.db.engine import Database
    from ctpreg.registry.db.migrate import upgrade

    db_url = pg_url
    migrated = Database(db_url)
    upgrade(migrated.engine)
    migrated.dispose()
    import threading

    from ctpreg.registry.db import crud, postgres_writes
    from ctpreg.registry.service import Registry
    from helpers import artifact_bytes

    registry = open_registry(db_url, (tmp_path / "store").as_uri())
    for seed in (1, 2, 3):
        registry.publish_bytes(artifact_bytes(seed), name="race/q")
    v3 = registry.get("race/q:3")
    original_refresh, original_insert = crud.refresh_latest, crud.insert_next_version
    original_rows = postgres_writes.publish_rows
    threads, entered = [], threading.Event()

    def refresh(session, *, name):  # the deprecate's decision on latest
        entered.set()  # it is about to decide while the publish is still open
        return original_refresh(session, name=name)

    def deprecate_meanwhile() -> None:  # v4 is latest inside the uncommitted publish: start the deprecate now
        deprecator = open_registry(db_url, (tmp_path / "store").as_uri())
        thread = threading.Thread(target=lambda: deprecator.deprecate(v3.ref))
        thread.start()
        threads.append(thread)
        assert entered.wait(30)
        thread.join(1.0)  # give it time to decide (wrongly, without the lock) before the publish commits

    def insert_next_version(session, **kwargs):
        inserted = original_insert(session, **kwargs)
        deprecate_meanwhile()
        return inserted

    def publish_rows(connection, **kwargs):
        return original_rows(_CommitAfter(connection, deprecate_meanwhile), **kwargs)

    monkeypatch.setattr(crud, "refresh_latest", refresh)
    if path == "sqlalchemy":
        monkeypatch.setattr(Registry, "_publish_on_postgres", lambda self, *args, **kwargs: None)
        monkeypatch.setattr(crud, "insert_next_version", insert_next_version)
    else:
        monkeypatch.setattr(postgres_writes, "publish_rows", publish_rows)
    assert registry.publish_bytes(artifact_bytes(4), name="race/q").prompt.version == 4
    monkeypatch.undo()
    assert len(threads) == 1, f"the {path} path published"
    threads[0].join(30)
    assert registry.get("race/q").version == 4 and registry.get("race/q:3").deprecated
    registry.db.dispose()
