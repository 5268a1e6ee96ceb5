"""A marker of the metadata DB's committed state that differs after every commit: what lets a server keep answers
until the DB changes, exactly, with no time-to-live and no stale answer.

- SQLite: ``PRAGMA data_version`` on a connection of its own that never writes. SQLite changes it whenever another
  connection commits (any process), and the check reads no page.
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
import sqlite3
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
    def __init__(self, path: str) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None

    async def current(self) -> str | None:
        try:
            if self._connection is None:  # autocommit: no read transaction stays open to pin an old state
                self._connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            return str(self._connection.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error as exc:
            log.warning("cannot read the SQLite change marker: %s", exc)
            await self.close()
            return None

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class PostgresMarker:
    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._connection = None  # psycopg.AsyncConnection, opened on first use in the serving event loop
        self._lock = asyncio.Lock()

    async def current(self) -> str | None:
        import psycopg

        try:
            async with self._lock:
                if self._connection is None or self._connection.closed:
                    self._connection = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                cursor = await self._connection.execute("SELECT pg_current_snapshot()::text")
                row = await cursor.fetchone()
            return row[0] if row else None
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
