"""A marker of the metadata DB's committed state that differs after every commit: what lets a server keep answers
until the DB changes, exactly, with no time-to-live and no stale answer.

A marker is compared only with markers read earlier by the same object (each server worker keeps its own answers),
and each one starts with a random id drawn whenever its connection is opened. Counters restart on a new connection
and a reconnect may reach another database (a file restored from a backup, a promoted standby whose transaction ids
lag behind the old primary's), so a marker read through one connection never equals one read through another.

- SQLite: ``PRAGMA data_version`` on a read-only connection of its own that never writes. SQLite changes it whenever
  another connection commits (any process), and the check reads no page. An open connection keeps reading the file
  it opened, so each read also compares the path's (st_dev, st_ino) with that file's and reopens when the file was
  replaced (``mv restored.db registry.db``); while the connection holds the old file open, no new file can get its
  inode number. Overwriting the open file in place (``cp`` over it) corrupts it for every open connection
  (https://www.sqlite.org/howtocorrupt.html); restore through SQLite (``.restore``), which is a commit like any other.
- PostgreSQL: the text of ``pg_current_snapshot()`` (xmin:xmax:in-progress ids). A snapshot decides which
  transactions are visible, so two equal snapshots see the same data, and any commit after a snapshot makes every
  later one differ (its id leaves the in-progress list or lies past xmax). Commits elsewhere in the cluster change it
  too: that costs a recomputation, never a stale answer.

Read the marker *before* computing an answer and keep the answer under it: the answer is then at least as new as
the marker, and a later request with the same marker is one no commit has happened before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from .lite import sqlite_path
from .postgres_pool import conninfo_for

log = logging.getLogger(__name__)


class ChangeMarker(Protocol):
    async def current(self) -> str | None:
        """The marker now, or None when it cannot be read (the caller then caches nothing)."""
        ...

    async def close(self) -> None: ...


class SqliteMarker:
    """Safe to call from any thread: one lock guards the connection (a marker read takes a few microseconds, less
    than opening a connection per call; and ``data_version`` only means something within one connection)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file the connection reads
        self._id = ""

    async def current(self) -> str | None:
        with self._lock:
            try:
                file = _file_identity(self._path)
                if file != self._file:
                    self._open(file)
                if self._connection is None:
                    return None
                return f"{self._id}:{self._connection.execute('PRAGMA data_version').fetchone()[0]}"
            except (OSError, sqlite3.Error) as exc:
                log.warning("cannot read the SQLite change marker: %s", exc)
                self._disconnect()
                return None

    async def close(self) -> None:
        with self._lock:
            self._disconnect()

    def _open(self, file: tuple[int, int]) -> None:
        """Connect to the file at the path, known to be ``file`` before and after opening it (else no connection:
        the path was replaced meanwhile, and the next read tries again)."""
        self._disconnect()
        uri = f"{Path(self._path).absolute().as_uri()}?mode=ro"  # a missing file is an error, never created
        connection = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        if _file_identity(self._path) != file:
            connection.close()
            return
        self._connection, self._file, self._id = connection, file, _new_id()

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection, self._file = None, None


def _file_identity(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _new_id() -> str:
    return secrets.token_hex(8)


class PostgresMarker:
    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._connection = None  # psycopg.AsyncConnection, opened on first use in the serving event loop
        self._lock = asyncio.Lock()
        self._id = ""

    async def current(self) -> str | None:
        import psycopg

        try:
            async with self._lock:
                if self._connection is None or self._connection.closed:
                    self._connection = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                    self._id = _new_id()
                cursor = await self._connection.execute("SELECT pg_current_snapshot()::text")
                row = await cursor.fetchone()
            return f"{self._id}:{row[0]}" if row else None
        except psycopg.Error as exc:
            log.warning("cannot read the PostgreSQL change marker: %s", str(exc).splitlines()[0] if str(exc) else exc)
            await self.close()
            return None

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


def change_marker(url: str) -> ChangeMarker | None:
    """The marker for a DB URL, or None for a backend without one (answers are then never kept)."""
    path = sqlite_path(url)
    if path is not None:
        return SqliteMarker(str(path))
    conninfo = conninfo_for(url)
    return PostgresMarker(conninfo) if conninfo is not None else None
