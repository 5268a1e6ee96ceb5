"""``s3://bucket/prefix`` object store through boto3.

Credentials come from the standard AWS chain; ``CTPREG_S3_ENDPOINT_URL`` points at S3-compatible servers (MinIO,
moto). botocore's ``standard`` retry mode retries 5xx, throttling and timeouts with exponential backoff; every
botocore error is converted to a ``StoreError`` (or ``NotFound``) here, where it enters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import InvalidInput, NotFound, StoreError
from ..digest import sha256_hex
from .base import PROMPT_PREFIX, ObjectInfo, ObjectStore, object_key

_MISSING = {"404", "NoSuchKey", "NotFound"}
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_ALREADY_THERE = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


def _is_missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in _MISSING


class S3Store(ObjectStore):
    def __init__(self, url: str, *, endpoint_url: str | None = None, max_attempts: int = 5) -> None:
        import boto3
        from botocore.config import Config

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not _BUCKET_RE.fullmatch(bucket) or any(c in prefix for c in "\x00?#%\\") or not prefix.isprintable():
            raise InvalidInput(f"malformed S3 URL {url!r}: expected s3://bucket[/prefix] (bucket: 3-63 of a-z 0-9 . -)")
        if endpoint_url is not None:
            parsed = urlparse(endpoint_url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname or "\x00" in endpoint_url:
                raise InvalidInput(f"S3 endpoint URL {endpoint_url!r} must be http(s)://host[:port]")
        self.url = url
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        config = Config(retries={"max_attempts": max_attempts, "mode": "standard"}, connect_timeout=10, read_timeout=60)
        self._client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)

    @contextmanager
    def _translated(self, action: str, key: str) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            if _is_missing(exc):
                raise NotFound(f"object {key} is missing from {self.url}") from None
            raise StoreError(f"S3 {action} s3://{self.bucket}/{self.prefix}{key} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"S3 {action} s3://{self.bucket}/{self.prefix}{key} failed: {exc}") from exc

    def put_content(self, data: bytes) -> tuple[str, str]:
        """One conditional PUT (``If-None-Match: *``) instead of HEAD + PUT; an existing object is only touched."""
        sha = sha256_hex(data)
        key = object_key(sha)
        try:
            self._client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in _ALREADY_THERE:
                raise StoreError(f"S3 put s3://{self.bucket}/{self.prefix}{key} failed: {exc}") from exc
            self.touch(key)
        except BotoCoreError as exc:
            raise StoreError(f"S3 put s3://{self.bucket}/{self.prefix}{key} failed: {exc}") from exc
        return sha, key

    def put(self, key: str, data: bytes) -> None:
        with self._translated("put", key):
            self._client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def get(self, key: str) -> bytes:
        with self._translated("get", key):
            return self._client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def check(self) -> None:
        """HEAD the bucket: a missing bucket, refused credentials or an endpoint that does not answer fail here."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _is_missing(exc) or exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise StoreError(f"S3 bucket {self.bucket!r} does not exist") from None
            raise StoreError(f"S3 bucket {self.bucket!r} does not answer: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"S3 bucket {self.bucket!r} does not answer: {exc}") from exc

    def locations(self) -> tuple[str, ...]:
        endpoint = urlparse(self.endpoint_url) if self.endpoint_url else None
        return (self.url, f"s3://{self.bucket}", self.bucket,
                *((self.endpoint_url, endpoint.netloc, endpoint.hostname or "") if endpoint else ()))

    def exists(self, key: str) -> bool:
        try:
            with self._translated("head", key):
                self._client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except NotFound:
            return False
        return True

    def touch(self, key: str) -> None:
        """Copy the object onto itself: S3 refreshes LastModified without the bytes travelling."""
        with self._translated("touch", key):
            self._client.copy_object(
                Bucket=self.bucket, Key=self.prefix + key, MetadataDirective="REPLACE",
                CopySource={"Bucket": self.bucket, "Key": self.prefix + key},
            )

    def delete(self, key: str) -> None:
        with self._translated("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def list(self, prefix: str = PROMPT_PREFIX) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        with self._translated("list", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) :]
                    yield ObjectInfo(key=key, size=item["Size"], modified=item["LastModified"])
