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
