"""Object store interface: a few abstract byte operations, with content addressing and verification built on top.

Keys are ``prompts/<sha[:2]>/<sha>.safetensors``; objects are immutable, so a put of an existing key is a no-op and
every read is checked against the sha256 in its key.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from ..digest import sha256_hex
from ..errors import IntegrityError

PROMPT_PREFIX = "prompts/"


def object_key(sha256: str) -> str:
    return f"{PROMPT_PREFIX}{sha256[:2]}/{sha256}.safetensors"


def sha_of_key(key: str) -> str | None:
    name = key.rsplit("/", 1)[-1]
    return name.removesuffix(".safetensors") if name.endswith(".safetensors") else None


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime


class ObjectStore(abc.ABC):
    """Where prompt bytes live. Subclasses implement the byte primitives and ``check``; the rest is shared."""

    url: str

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key`` so that readers see either nothing or all of it."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Return the bytes under ``key``; ``NotFound`` if absent."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    @abc.abstractmethod
    def list(self, prefix: str = PROMPT_PREFIX) -> Iterator[ObjectInfo]:
        """The objects under ``prefix``; one removed or replaced while listing is left out, never an error."""

    @abc.abstractmethod
    def check(self) -> None:
        """``StoreError`` unless the store is there and answers (its folder or bucket exists): a missing one is a
        misconfiguration or an unmounted volume, not an empty store."""

    def locations(self) -> tuple[str, ...]:
        """What names where this store is (URL, folder, bucket, endpoint): for the server to keep out of answers."""
        return (self.url,)

    def partial_uploads(self, older_than: datetime) -> list[ObjectInfo]:
        """Temp files a killed writer left behind, last written before ``older_than`` (none where a store writes an
        object in one request, as S3's single PUT does)."""
        return []

    def touch(self, key: str) -> None:
        """Refresh an object's modification time, so ``gc``'s grace period protects a publish that reuses it."""
        self.put(key, self.get(key))

    def put_content(self, data: bytes) -> tuple[str, str]:
        """Store bytes under their content address; return ``(sha256, key)``.

        Present objects are not rewritten, only touched: an old unreferenced copy must not be collected while a
        publish that reuses it is between upload and commit.
        """
        sha = sha256_hex(data)
        key = object_key(sha)
        if self.exists(key):
            self.touch(key)
        else:
            self.put(key, data)
        return sha, key

    def get_verified(self, key: str, sha256: str) -> bytes:
        """Read ``key`` and refuse the bytes unless they hash to ``sha256``."""
        data = self.get(key)
        actual = sha256_hex(data)
        if actual != sha256:
            raise IntegrityError(
                f"object {key} in {self.url} is corrupt: sha256 {actual[:12]}… != recorded {sha256[:12]}…"
            )
        return data
