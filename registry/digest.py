"""Content addresses: the sha256 every stored object and cache entry is named by and checked against."""

from __future__ import annotations

import hashlib


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
