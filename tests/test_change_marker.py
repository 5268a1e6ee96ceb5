"""The SQLite change marker across reconnects, a DB file replaced on disk, and calls from many threads: a marker
equal to one read earlier must always mean no commit happened in between."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from ctpreg.registry.db.changes import PostgresMarker, SqliteMarker, change_marker


def current(marker: SqliteMarker) -> str | None:
    return asyncio.run(marker.current())


def make_db(path: Path, rows: int = 0) -> Path:
    with sqlite3.connect(path) as writer:
        writer.execute("CREATE TABLE t (x INTEGER)")
        writer.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    writer.close()
    return path


def commit(path: Path, value: int = 1) -> None:
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("INSERT INTO t VALUES (?)", (value,))
    writer.close()


@pytest.mark.parametrize("reconnect", ["new marker", "closed connection"])
def test_a_reconnect_after_commits_never_repeats_an_earlier_marker(tmp_path: Path, reconnect: str) -> None:
    path = make_db(tmp_path / "m.db")
    marker = SqliteMarker(str(path))
    before = current(marker)
    assert before is not None
    for i in range(3):
        commit(path, i)
    if reconnect == "new marker":
        asyncio.run(marker.close())
        marker = SqliteMarker(str(path))
    else:
        asyncio.run(marker.close())
    assert current(marker) not in (before, None)


def test_a_db_file_replaced_on_disk_changes_the_marker_and_is_read_from_then_on(tmp_path: Path) -> None:
    path = make_db(tmp_path / "m.db")
    marker = SqliteMarker(str(path))
    before = current(marker)
    os.replace(make_db(tmp_path / "restored.db", rows=5), path)  # a restore from a backup
    after = current(marker)
    assert after not in (before, None)
    assert current(marker) == after, "reading the new file is no change"
    commit(path)
    assert current(marker) not in (before, after, None), "commits to the new file are seen"


def test_a_missing_db_file_gives_no_marker_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    marker = SqliteMarker(str(path))
    assert current(marker) is None
    assert not path.exists()
    make_db(path)
    seen = current(marker)
    assert seen is not None
    path.unlink()
    assert current(marker) is None


def test_threads_read_the_marker_at_once_while_commits_happen(tmp_path: Path) -> None:
    path = make_db(tmp_path / "m.db")
    marker = SqliteMarker(str(path))
    first = current(marker)
    seen: list[str | None] = []
    failures: list[BaseException] = []
    start = threading.Barrier(5)

    def read() -> None:
        start.wait()
        try:
            for _ in range(300):
                seen.append(current(marker))
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    start.wait()
    for i in range(20):
        commit(path, i)
    for thread in threads:
        thread.join()
    last = current(marker)
    asyncio.run(marker.close())
    assert not failures and None not in seen
    assert last != first, "the commits moved the marker"


@pytest.mark.postgres
def test_a_postgres_reconnect_never_repeats_an_earlier_marker(pg_url: str) -> None:
    """A reconnect may reach another server (a promoted standby whose transaction ids lag behind)."""
    marker = change_marker(pg_url)
    assert isinstance(marker, PostgresMarker)

    async def scenario() -> tuple[str | None, str | None, str | None]:
        before, again = await marker.current(), await marker.current()
        await marker.close()
        after = await marker.current()
        await marker.close()
        return before, again, after

    before, again, after = asyncio.run(scenario())
    assert before == again and after not in (before, None)
