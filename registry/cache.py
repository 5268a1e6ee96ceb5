"""Local cache of prompt bytes and of the last resolutions, so a fleet can start with no DB, S3 or network.

Layout::

    $CTPREG_CACHE_DIR/
    ├── blobs/<sha256>             artifact bytes, named by their sha256 and re-hashed on every read
    └── refs/
        ├── targets/<key>.json     last resolution of a target (key = sha256 of the target's description)
        └── prompts/<key>.json     last lookup of a prompt reference (NAME, NAME:V, NAME@ALIAS, sha prefix)

Every write goes to a unique temp file in the same folder and is renamed into place (``os.replace``), so readers
see a whole file or none; correctness never depends on locks. A blob whose hash is wrong is deleted, never returned.

Nothing outside this folder is ever read, written or deleted: a blob's name must be a 64-hex digest (so no path
can be smuggled in through a registry's answer), and an entry that is not a regular file inside ``blobs/`` (a
symbolic link, say) counts as corrupt and only the entry itself is removed. Downloads stream into a temp file
while they are hashed and stop at the size the record declares.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .digest import sha256_hex
from .errors import IntegrityError, StoreError
from .files import SHARED, atomic_write, create_temp
from .record_checks import check_sha256


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, data)
    except OSError as exc:  # a read-only or full cache folder: the caller gets a ctpreg error, not an OSError
        raise StoreError(f"cannot write cache entry {path}: {exc.strerror or exc}") from None


def _key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class PromptCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def blob_path(self, sha256: str) -> Path:
        """Where the blob of ``sha256`` lives; anything but a 64-hex digest is refused before a path is built."""
        return self.root / "blobs" / check_sha256(sha256, "a cache entry's name")

    def get_blob(self, sha256: str) -> bytes | None:
        """The cached bytes if present and intact; a corrupt entry is removed and reported as absent."""
        path = self.blob_path(sha256)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if not path.is_symlink():
                raise StoreError(f"cannot read cache entry {path}: {exc.strerror or exc}") from None
            path.unlink(missing_ok=True)  # the link itself, never what it points at
            return None
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None  # a FIFO, device or folder under a digest's name: not ours to read or remove
            data = handle.read()
        if sha256_hex(data) != sha256:
            path.unlink(missing_ok=True)
            return None
        return data

    def put_stream(self, sha256: str, size: int, chunks: Iterable[bytes]) -> bytes:
        """Write a download into the cache as it arrives, hashing it, and keep it only if it is exactly ``size``
        bytes hashing to ``sha256``; the bytes are returned. A refused or broken download leaves the cache as it
        was (its temp file is removed)."""
        path = self.blob_path(sha256)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = create_temp(path, SHARED)
        except OSError as exc:
            raise StoreError(f"cannot write cache entry {path}: {exc.strerror or exc}") from None
        data, digest = bytearray(), hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    if len(data) + len(chunk) > size:
                        raise IntegrityError(f"the registry sent more than the {size} bytes recorded for {sha256}")
                    data += chunk
                    digest.update(chunk)
                    handle.write(chunk)
            if len(data) != size or digest.hexdigest() != sha256:
                raise IntegrityError(f"the bytes the registry sent do not match sha256 {sha256}")
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write cache entry {path}: {exc.strerror or exc}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return bytes(data)

    def get_ref(self, kind: str, parts: dict[str, Any]) -> dict[str, Any] | None:
        """The entry remembered for ``parts``, or None when there is none or it is not one this cache wrote for
        exactly these parts (corrupt, another type, bad UTF-8, or a file copied under another key)."""
        path = self.root / "refs" / kind / f"{_key(parts)}.json"
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != json.loads(json.dumps(parts, default=str)):
            return None
        value = entry.get("value")
        return value if isinstance(value, dict) else None

    def put_ref(self, kind: str, parts: dict[str, Any], value: dict[str, Any]) -> None:
        path = self.root / "refs" / kind / f"{_key(parts)}.json"
        _write(path, json.dumps({"key": parts, "value": value}, sort_keys=True, default=str).encode())
