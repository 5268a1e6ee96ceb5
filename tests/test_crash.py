"""A publish killed between upload and commit leaves only an orphan object, which gc removes after the grace."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ctpreg.registry.service import Registry
from ctpreg.registry.stores.local import LocalStore
from helpers import artifact_bytes

KILL_BEFORE_COMMIT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from ctpreg.registry.db import crud, postgres_writes
from helpers import artifact_bytes, open_registry

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)   # the object is uploaded; the DB transaction never commits

def upload_then_die(connection, *, upload, **kwargs):   # PostgreSQL's psycopg path: inside its transaction
    return publish_rows(connection, upload=lambda: (upload(), die()), **kwargs)

crud.insert_next_version = die
publish_rows, postgres_writes.publish_rows = postgres_writes.publish_rows, upload_then_die
open_registry({db_url!r}, {store_url!r}).publish_bytes(artifact_bytes(seed=99), name="crashy")
"""


def test_sigkill_between_upload_and_commit(registry: Registry, db_url: str, store_dir: Path) -> None:
    kept = registry.publish_bytes(artifact_bytes(seed=1), name="kept").prompt
    script = KILL_BEFORE_COMMIT.format(tests=str(Path(__file__).parent), db_url=db_url, store_url=store_dir.as_uri())
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()

    store = LocalStore(store_dir)
    keys = {o.key for o in store.list()}
    assert len(keys) == 2, "the killed publish uploaded its object"
    assert all(store.exists(r.object_key) for r in registry.list_prompts()), "no row may point to a missing object"
    assert [r.name for r in registry.list_prompts()] == ["kept"]

    assert registry.gc(grace_seconds=3600) == [], "young orphans survive the grace period"
    old = time.time() - 7200
    for path in store_dir.rglob("*.safetensors"):
        os.utime(path, (old, old))
    dry = registry.gc(grace_seconds=3600, dry_run=True)
    assert len(dry) == 1 and len({o.key for o in store.list()}) == 2
    removed = registry.gc(grace_seconds=3600)
    assert [o.key for o in removed] == [o.key for o in dry]
    assert {o.key for o in store.list()} == {kept.object_key}
    assert registry.fetch(kept.ref)[1] == artifact_bytes(seed=1)


def test_republishing_an_old_orphan_refreshes_it(registry: Registry, store_dir: Path) -> None:
    data = artifact_bytes(seed=5)
    sha, key = registry.store.put_content(data)  # an orphan from some earlier crash
    old = time.time() - 7200
    os.utime(store_dir / key, (old, old))
    registry.publish_bytes(data, name="reuse")
    assert registry.gc(grace_seconds=0) == []
    assert registry.fetch("reuse")[1] == data


def test_publish_restores_an_object_collected_before_its_commit(
    registry: Registry, store_dir: Path, monkeypatch
) -> None:
    from ctpreg.registry.db import crud

    if registry.db.dialect == "postgresql":
        pytest.skip("a PostgreSQL publish holds the publish gate instead (the next test)")
    data = artifact_bytes(seed=6)
    original = crud.insert_next_version

    def collected_meanwhile(session, **kwargs):
        for path in store_dir.rglob("*.safetensors"):
            path.unlink()  # what a racing gc would do to an old copy between our touch and our commit
        return original(session, **kwargs)

    monkeypatch.setattr(crud, "insert_next_version", collected_meanwhile)
    record = registry.publish_bytes(data, name="raced").prompt
    monkeypatch.setattr(crud, "insert_next_version", original)
    assert registry.fetch(record.ref)[1] == data


def test_gc_waits_for_a_publish_between_upload_and_commit(registry: Registry, monkeypatch) -> None:
    if registry.db.dialect != "postgresql":
        pytest.skip("a SQLite publish checks its object after committing (the previous test)")
    registry.publish_bytes(artifact_bytes(seed=9), name="other")  # gc refuses a DB that references nothing
    data = artifact_bytes(seed=8)
    upload = registry.store.put_content
    race: dict = {}

    def upload_then_collect(payload: bytes):
        uploaded = upload(payload)
        thread = threading.Thread(target=lambda: race.setdefault("removed", registry.gc(grace_seconds=0)))
        thread.start()
        thread.join(timeout=1.0)  # a gc that does not wait deletes the uncommitted object now
        race.update(waited=thread.is_alive(), thread=thread)
        return uploaded

    monkeypatch.setattr(registry.store, "put_content", upload_then_collect)
    record = registry.publish_bytes(data, name="raced").prompt
    race["thread"].join(timeout=60)
    assert race["waited"], "gc waits for the publish in flight to commit"
    assert race["removed"] == [] and registry.fetch(record.ref)[1] == data


def test_gc_skips_an_orphan_touched_after_it_was_listed(registry: Registry, store_dir: Path, monkeypatch) -> None:
    data = artifact_bytes(seed=7)
    _, key = registry.store.put_content(data)
    old = time.time() - 7200
    os.utime(store_dir / key, (old, old))
    listing = list(registry.store.list())
    calls = {"n": 0}

    def stale_then_fresh(prefix="prompts/"):
        calls["n"] += 1
        if calls["n"] == 1:
            registry.store.touch(key)  # a publish reuses the object right after gc listed it
            return iter(listing)
        return LocalStore(store_dir).list(prefix)

    monkeypatch.setattr(registry.store, "list", stale_then_fresh)
    assert registry.gc(grace_seconds=3600, allow_empty_db=True) == []
    assert (store_dir / key).exists()
