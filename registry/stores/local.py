"""``file://`` object store: a folder, written whole (``files.atomic_write``) so readers never see half an object."""

from __future__ import annotations

import os
from stat import S_ISREG
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from ..errors import InvalidInput, NotFound, StoreError
from ..files import atomic_write
from .base import PROMPT_PREFIX, ObjectInfo, ObjectStore


class LocalStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or not key or key.startswith("/"):
            raise InvalidInput(f"object key {key!r} escapes the store")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            atomic_write(path, data, durable=True)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"object {key} is missing from {self.url}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def touch(self, key: str) -> None:
        try:
            os.utime(self._path(key))
        except OSError as exc:
            raise StoreError(f"cannot touch {key}: {exc.strerror or exc}") from exc

    def check(self) -> None:
        if not self.root.is_dir():
            raise StoreError(f"the object store folder {self.root} does not exist (an unmounted volume, or a wrong "
                             "CTPREG_STORE_URL?)")
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise StoreError(f"the object store folder {self.root} is not readable and writable by this user")

    def locations(self) -> tuple[str, ...]:
        return (self.url, str(self.root))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot delete {key}: {exc.strerror or exc}") from exc

    def partial_uploads(self, older_than: datetime) -> list[ObjectInfo]:
        """``atomic_write``'s temp files (``.<name>.<random>.tmp``) under the prompts folder, as relative keys."""
        base = self.root / PROMPT_PREFIX.rstrip("/")
        found = []
        for path in sorted(base.rglob(".*.tmp")) if base.is_dir() else []:
            stat = _regular_file(path)
            if stat is None:
                continue
            modified = datetime.fromtimestamp(stat.st_mtime, UTC)
            if modified <= older_than:
                found.append(
                    ObjectInfo(key=path.relative_to(self.root).as_posix(), size=stat.st_size, modified=modified)
                )
        return found

    def list(self, prefix: str = PROMPT_PREFIX) -> Iterator[ObjectInfo]:
        base = self._path(prefix.rstrip("/") or ".")
        if not base.exists():
            return
        for path in [base] if base.is_file() else sorted(base.rglob("*")):
            stat = _regular_file(path) if not path.name.startswith(".") else None
            if stat is not None:
                yield ObjectInfo(
                    key=path.relative_to(self.root).as_posix(),
                    size=stat.st_size,
                    modified=datetime.fromtimestamp(stat.st_mtime, UTC),
                )


def _regular_file(path: Path) -> os.stat_result | None:
    """``path``'s stat if it is a regular file; None if it is not, or no longer there: a writer renames its temp
    file into place, and gc removes objects, while a listing runs."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat if S_ISREG(stat.st_mode) else None
