"""Engine, sessions and schema-revision guard for the metadata DB.

One managed-session shape: ``Database.session()`` commits on success and rolls back on any error; query functions
in ``crud`` never commit, so a publish is one transaction. SQLite runs in WAL mode with the driver's own transaction
handling turned off, so write sessions can take the write lock up front (``BEGIN IMMEDIATE``) instead of failing on
a lock upgrade under concurrency (the recipe in SQLAlchemy's pysqlite notes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlmodel import Session

from ..errors import CtpregError, DatabaseError, InvalidInput, SchemaOutOfDate
from .revision import SCHEMA_REVISION

__all__ = ["SCHEMA_REVISION", "Database", "create_db_engine", "safe_url"]
_WRITE = "ctpreg_write"


def create_db_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidInput(f"malformed database URL {url!r}") from None
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(url)
        # No pre-ping (a round trip per checkout); recycled connections and the pool's invalidation on error cover
        # restarts of the database.
        return create_engine(url, pool_recycle=1800)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        hint = " (pip install 'ctpreg[postgres]')" if parsed.get_backend_name() == "postgresql" else ""
        raise DatabaseError(f"no driver for {parsed.drivername}{hint}: {exc}") from None


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):  # type: ignore[no-untyped-def]
        immediate = connection.get_execution_options().get(_WRITE)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<malformed url>"


class Database:
    """The metadata DB behind one URL: checks the schema once, then hands out managed sessions."""

    def __init__(self, url: str, *, auto_upgrade_empty: bool = False) -> None:
        self.url = url
        self.engine = create_db_engine(url)
        self._write_engine = self.engine.execution_options(**{_WRITE: True})
        # Reads need no transaction: autocommit saves the BEGIN/COMMIT round trips on a networked database.
        self._read_engine = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT") if self.dialect == "postgresql" else self.engine
        )
        self._auto_upgrade_empty = auto_upgrade_empty
        self._schema_checked = False

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def current_revision(self) -> str | None:
        if self._sqlite_file_missing():
            if not self._auto_upgrade_empty:
                return None  # a mistyped SQLite URL must not leave an empty DB (or its folders) behind
            self.make_sqlite_folder()
        try:
            with self.engine.connect() as conn:
                if not inspect(conn).has_table("alembic_version"):
                    return None
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot read {safe_url(self.url)}: {_first_line(exc)}") from None

    def check_schema(self) -> None:
        """Refuse to run against a DB whose schema differs from the code; upgrade a brand-new embedded DB."""
        if self._schema_checked:
            return
        revision = self.current_revision()
        if revision != SCHEMA_REVISION and self._auto_upgrade_empty:
            # Several processes may start on a fresh home at once: one creates the schema under the lock while the
            # others, which may have read a half-upgraded revision meanwhile, wait for it and read again.
            with self._upgrade_lock():
                revision = self.current_revision()
                if revision is None and self._is_empty():
                    from .migrate import upgrade

                    upgrade(self.engine)
                    revision = self.current_revision()
        if revision != SCHEMA_REVISION:
            state = "has no ctpreg schema" if revision is None else f"is at revision {revision}"
            raise SchemaOutOfDate(
                f"metadata DB {safe_url(self.url)} {state}; this ctpreg needs {SCHEMA_REVISION}: "
                "run `ctpreg db upgrade`"
            )
        self._schema_checked = True

    def _sqlite_file(self) -> Path | None:
        """The file of a SQLite DB (None for other backends and in-memory DBs)."""
        database = self.engine.url.database
        if self.dialect != "sqlite" or not database or database == ":memory:":
            return None
        return Path(database).expanduser()

    def _sqlite_file_missing(self) -> bool:
        path = self._sqlite_file()
        return path is not None and not path.exists()

    def make_sqlite_folder(self) -> None:
        """Create a SQLite DB's folder: when the embedded DB is first used, or by ``ctpreg db upgrade``."""
        path = self._sqlite_file()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _upgrade_lock(self) -> Iterator[None]:
        """An exclusive file lock beside the embedded DB file, held while it is created."""
        import fcntl

        lock_path = Path(str(self.engine.url.database) + ".lock")
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _is_empty(self) -> bool:
        with self.engine.connect() as conn:
            return not inspect(conn).get_table_names()

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A transaction: commit when the block ends, roll back on any error; SQLAlchemy errors become ctpreg's."""
        try:
            self.check_schema()
        except SQLAlchemyError as exc:
            raise DatabaseError(f"metadata DB {safe_url(self.url)}: {_first_line(exc)}") from exc
        session = Session(self._write_engine if write else self._read_engine, expire_on_commit=False)
        try:
            yield session
            session.commit()
        except CtpregError:
            session.rollback()
            raise
        except SQLAlchemyError as exc:
            session.rollback()
            raise DatabaseError(f"metadata DB error: {_first_line(exc)}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
