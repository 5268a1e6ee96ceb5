"""Object stores by URL scheme: ``file://`` (default) and ``s3://``."""

from __future__ import annotations

from urllib.parse import unquote, urlparse
from pathlib import Path

from ..errors import InvalidInput
from .base import ObjectInfo, ObjectStore, object_key, sha_of_key


def local_root(url: str) -> Path:
    """The folder a ``file://`` URL names: an absolute local path and nothing else. ``file://relative/path`` (a host
    part), ``file:`` (no path) or an encoded NUL would otherwise land in another place than the user meant."""
    parsed = urlparse(url)
    path = unquote(parsed.path)
    if parsed.netloc not in ("", "localhost"):
        raise InvalidInput(f"store URL {url!r} names host {parsed.netloc!r}; a file store is file:///absolute/path")
    if not path.startswith("/") or parsed.query or parsed.fragment or parsed.params:
        raise InvalidInput(f"store URL {url!r} must be file:///absolute/path")
    if "\x00" in path:
        raise InvalidInput(f"store URL {url!r} contains a NUL character")
    return Path(path)


def open_store(url: str, *, s3_endpoint_url: str | None = None) -> ObjectStore:
    scheme = urlparse(url).scheme
    if scheme == "file":
        from .local import LocalStore

        return LocalStore(local_root(url))
    if scheme == "s3":
        from .s3 import S3Store

        return S3Store(url, endpoint_url=s3_endpoint_url)
    raise InvalidInput(f"unsupported store URL {url!r}: use file:///path or s3://bucket/prefix")


__all__ = ["ObjectInfo", "ObjectStore", "object_key", "open_store", "sha_of_key"]
