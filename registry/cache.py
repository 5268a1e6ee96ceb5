"""Local cache of prompt bytes and of the last resolutions, so a fleet can start with no DB, S3 or network.

Layout::

    $CTPREG_CACHE_DIR/
    ├── blobs/<sha256>             artifact bytes, named by their sha256 and re-hashed on every read
    └── refs/
        ├── targets/<key>.json     last resolution of a target (key = sha256 of the target's description)
        └── prompts/<key>.json     last lookup of a prompt reference (NAME, NAME:V, NAME@ALIAS, sha prefix)

Every write goes to a unique temp file in the same folder and is renamed into place (``os.replace``), so readers
see a whole file or none; correctness never depends on locks. A blob whose hash is wrong is deleted, never returned.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .digest import sha256_hex
from .errors import StoreError
from .files import atomic_write


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
        return self.root / "blobs" / sha256

    def get_blob(self, sha256: str) -> bytes | None:
        """The cached bytes if present and intact; a corrupt entry is removed and reported as absent."""
        path = self.blob_path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read cache entry {path}: {exc.strerror or exc}") from exc
        if sha256_hex(data) != sha256:
            path.unlink(missing_ok=True)
            return None
        return data

    def put_blob(self, sha256: str, data: bytes) -> Path:
        if sha256_hex(data) != sha256:
            raise StoreError(f"refusing to cache bytes that do not hash to {sha256[:12]}…")
        path = self.blob_path(sha256)
        _write(path, data)
        return path

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
