"""``file://`` object store: a folder, written with temp file + ``os.replace`` so readers never see half an object."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from ..errors import InvalidInput, NotFound, StoreError
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
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
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

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot delete {key}: {exc.strerror or exc}") from exc

    def list(self, prefix: str = PROMPT_PREFIX) -> Iterator[ObjectInfo]:
        base = self._path(prefix.rstrip("/") or ".")
        if not base.exists():
            return
        for path in [base] if base.is_file() else sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                stat = path.stat()
                yield ObjectInfo(
                    key=path.relative_to(self.root).as_posix(),
                    size=stat.st_size,
                    modified=datetime.fromtimestamp(stat.st_mtime, UTC),
                )
