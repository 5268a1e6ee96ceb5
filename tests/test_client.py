"""Client: cache integrity, re-fetch of corrupt entries, and offline mode with sockets forbidden."""

import socket
from pathlib import Path

import numpy as np
import pytest

from ctpreg.registry import Client, Settings
from ctpreg.registry.errors import IntegrityError, OfflineMiss
from ctpreg.registry.service import Registry
from helpers import artifact_bytes, open_registry


def _settings(tmp_path: Path, *, offline: bool = False) -> Settings:
    env = {"CTPREG_HOME": str(tmp_path / "home"), "CTPREG_CACHE_DIR": str(tmp_path / "cache")}
    if offline:
        env["CTPREG_OFFLINE"] = "1"
    return Settings.from_env(env)


def _flip_byte(path: Path, offset: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_fetch_caches_and_verifies(registry: Registry, tmp_path: Path) -> None:
    published = registry.publish_bytes(artifact_bytes(seed=7)).prompt
    client = Client(_settings(tmp_path), registry=registry)
    prompt = client.fetch(published.ref)
    assert prompt.path == tmp_path / "cache" / "blobs" / published.sha256
    assert prompt.path.read_bytes() == artifact_bytes(seed=7)
    np.testing.assert_array_equal(prompt.numpy(), prompt.artifact.embeddings)
    assert prompt.metadata.model == "tiny-llama"


def test_corrupt_cache_entry_is_refetched_every_time(registry: Registry, tmp_path: Path) -> None:
    published = registry.publish_bytes(artifact_bytes(seed=7)).prompt
    client = Client(_settings(tmp_path), registry=registry)
    path = client.fetch(published.ref).path
    for offset in (-1, 100, 9):
        _flip_byte(path, offset)
        prompt = client.fetch(published.ref)
        assert prompt.data == artifact_bytes(seed=7)
        assert path.read_bytes() == artifact_bytes(seed=7)


def test_corrupt_store_object_is_an_error_not_data(registry: Registry, tmp_path: Path, store_dir: Path) -> None:
    published = registry.publish_bytes(artifact_bytes(seed=7)).prompt
    client = Client(_settings(tmp_path), registry=registry)
    _flip_byte(store_dir / published.object_key)
    for _ in range(3):
        with pytest.raises(IntegrityError, match="corrupt"):
            client.fetch(published.ref)
    assert not (tmp_path / "cache" / "blobs" / published.sha256).exists()


def test_s3_registry_round_trip_over_http(db_url: str, s3_bucket: str, moto_endpoint: str, tmp_path: Path) -> None:
    registry = open_registry(db_url, f"s3://{s3_bucket}/reg", moto_endpoint)
    published = registry.publish_bytes(artifact_bytes(seed=9)).prompt
    assert registry.publish_bytes(artifact_bytes(seed=9)).prompt.version == published.version
    record, data = registry.fetch(published.ref)
    assert data == artifact_bytes(seed=9) and record.sha256 == published.sha256
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    key = f"reg/{published.object_key}"
    body = bytearray(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    body[-2] ^= 0xFF
    s3.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body))
    with pytest.raises(IntegrityError):
        registry.fetch(published.ref)
    registry.db.dispose()


def test_offline_resolves_and_fetches_with_no_socket(registry: Registry, tmp_path: Path, monkeypatch) -> None:
    published = registry.publish_bytes(artifact_bytes(seed=5)).prompt
    online = Client(_settings(tmp_path), registry=registry)
    resolved = online.resolve("tiny-llama", method="gptq", bits=3)
    online.fetch(published.ref)
    assert resolved.record.sha256 == published.sha256

    def no_network(*args, **kwargs):
        raise AssertionError("offline mode opened a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    offline = Client(_settings(tmp_path, offline=True))
    again = offline.resolve("tiny-llama", method="gptq", bits=3)
    assert again.record.sha256 == published.sha256 and again.tier == resolved.tier
    assert offline.fetch(published.ref).data == artifact_bytes(seed=5)
    with pytest.raises(OfflineMiss, match="never resolved"):
        offline.resolve("tiny-llama", method="gptq", bits=4)
    with pytest.raises(OfflineMiss):
        _ = offline.registry
    _flip_byte(again.path)
    with pytest.raises(IntegrityError, match="fetch it again online"):
        offline.resolve("tiny-llama", method="gptq", bits=3)


def test_immutable_refs_are_served_from_cache_without_the_registry(
    registry: Registry, tmp_path: Path, monkeypatch
) -> None:
    published = registry.publish_bytes(artifact_bytes(seed=3), name="p").prompt
    client = Client(_settings(tmp_path), registry=registry)
    client.fetch("p:1")
    client.fetch(published.sha256)
    calls = []
    monkeypatch.setattr(registry, "get", lambda ref: calls.append(ref) or Registry.get(registry, ref))
    assert client.fetch("p:1").data == artifact_bytes(seed=3)
    assert client.fetch(published.sha256).data == artifact_bytes(seed=3)
    assert calls == [], "NAME:VERSION and full sha256 never change meaning: no registry round trip"
    client.fetch("p")
    assert calls == ["p"], "a name follows its moving 'latest' alias, so it always asks"
