"""Reused psycopg connections to a PostgreSQL metadata DB, for the paths that skip SQLAlchemy: resolve's reads
(``db.postgres_reads``) and publish's writes (``db.postgres_writes``).

A connection is opened in autocommit mode with every statement prepared server-side on first use; the writes open
their own transactions. A database whose schema is not the one this code expects is not used: the full path
upgrades or refuses, and reports a missing driver with the extra that installs it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import DatabaseError
from .revision import SCHEMA_REVISION

DRIVER_PREFIX = "postgresql+psycopg://"
IDLE_CONNECTIONS = 8  # kept open for reuse; more concurrent users connect and close


def conninfo_for(url: str) -> str | None:
    """The libpq URI of a ``postgresql+psycopg://`` URL; None for other URLs (they take the SQLAlchemy path)."""
    return "postgresql://" + url[len(DRIVER_PREFIX):] if url.startswith(DRIVER_PREFIX) else None


class PostgresPool:
    """psycopg connections reused across calls and threads (idle ones last in, first out)."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self.usable = True  # False once the schema, the URL or the driver turned out not to suit this path

    @contextmanager
    def connection(self) -> Iterator[Any | None]:
        """A connection of the pool, or None when this path cannot serve (the caller takes the full path). A
        connection left inside a transaction or broken is closed, never handed out again."""
        connection = self._checkout()
        try:
            yield connection
        finally:
            if connection is not None:
                self._checkin(connection)

    def _checkout(self) -> Any:
        try:
            import psycopg
        except ImportError:  # the full path says which extra installs the driver
            self.usable = False
            return None
        with self._lock:
            if self._idle:
                return self._idle.pop()
        if not self.usable:
            return None
        try:
            connection = psycopg.connect(self.conninfo, autocommit=True, prepare_threshold=0)
        except psycopg.ProgrammingError:  # an option libpq does not know: SQLAlchemy's URL handling is needed
            self.usable = False
            return None
        except psycopg.Error as exc:
            raise DatabaseError(f"metadata DB: {first_line(exc)}") from None
        try:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        except psycopg.Error:
            row = None
        if row is None or row[0] != SCHEMA_REVISION:
            connection.close()
            self.usable = False
            return None
        return connection

    def _checkin(self, connection: Any) -> None:
        from psycopg.pq import TransactionStatus

        if connection.closed or connection.broken or connection.info.transaction_status != TransactionStatus.IDLE:
            connection.close()
            return
        with self._lock:
            if len(self._idle) < IDLE_CONNECTIONS:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
