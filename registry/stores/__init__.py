"""Object stores by URL scheme: ``file://`` (default) and ``s3://``."""

from __future__ import annotations

from urllib.parse import unquote, urlparse
from pathlib import Path

from ..errors import InvalidInput
from .base import ObjectInfo, ObjectStore, object_key, sha_of_key


def open_store(url: str, *, s3_endpoint_url: str | None = None) -> ObjectStore:
    scheme = urlparse(url).scheme
    if scheme == "file":
        from .local import LocalStore

        return LocalStore(Path(unquote(urlparse(url).path)))
    if scheme == "s3":
        from .s3 import S3Store

        return S3Store(url, endpoint_url=s3_endpoint_url)
    raise InvalidInput(f"unsupported store URL {url!r}: use file:///path or s3://bucket/prefix")


__all__ = ["ObjectInfo", "ObjectStore", "object_key", "open_store", "sha_of_key"]
