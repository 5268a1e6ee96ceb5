"""Object stores: one contract for the folder store, S3 under moto's mock, and S3 over HTTP (moto server)."""

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from ctpreg.registry.errors import IntegrityError, NotFound, StoreError
from ctpreg.registry.stores import ObjectStore, object_key, open_store
from ctpreg.registry.stores.local import LocalStore


@pytest.fixture(params=["file", "s3-mock", "s3-http"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ObjectStore]:
    if request.param == "file":
        yield open_store(tmp_path.as_uri())
        return
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    if request.param == "s3-mock":
        with mock_aws():
            boto3.client("s3").create_bucket(Bucket="prompts")
            yield open_store("s3://prompts/team/a")
        return
    bucket = request.getfixturevalue("s3_bucket")
    yield open_store(f"s3://{bucket}/pfx", s3_endpoint_url=request.getfixturevalue("moto_endpoint"))


def test_contract(store: ObjectStore) -> None:
    data = b"prompt-bytes" * 100
    sha, key = store.put_content(data)
    assert key == object_key(sha) == f"prompts/{sha[:2]}/{sha}.safetensors"
    assert store.exists(key)
    assert store.get_verified(key, sha) == data
    assert store.put_content(data) == (sha, key)
    listed = list(store.list())
    assert [(o.key, o.size) for o in listed] == [(key, len(data))]
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(NotFound):
        store.get(key)


def test_wrong_bytes_are_refused(store: ObjectStore) -> None:
    data = b"original"
    sha, key = store.put_content(data)
    store.put(key, b"0riginal")  # simulate corruption at rest
    with pytest.raises(IntegrityError, match="corrupt"):
        store.get_verified(key, sha)


def test_local_store_rejects_keys_outside_its_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    with pytest.raises(Exception, match="escapes the store"):
        store.put("../outside", b"x")


def test_unreachable_s3_is_a_store_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    from ctpreg.registry.stores.s3 import S3Store

    store = S3Store("s3://bucket", endpoint_url="http://127.0.0.1:9", max_attempts=1)
    with pytest.raises(StoreError, match="S3 head"):
        store.exists("prompts/aa/x")


def test_listing_one_key_returns_that_object(store: ObjectStore) -> None:
    _, key = store.put_content(b"only this one")
    store.put_content(b"another")
    assert [o.key for o in store.list(prefix=key)] == [key]
