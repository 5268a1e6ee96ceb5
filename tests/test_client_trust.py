"""The HTTP client treats every answer as hostile: a registry (or anything in the middle) cannot make it touch a
file outside its cache, take a record for another ref, read without bound, or send the token in clear text."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctpreg.registry import Client, Settings
from ctpreg.registry.db.migrate import upgrade
from ctpreg.registry.errors import CtpregError, IntegrityError, InvalidInput, MalformedAnswer, StoreError
from ctpreg.registry.remote import RemoteRegistry
from helpers import FP_B, artifact_bytes, open_registry
from hostile import hostile_server, json_answer, raw_answer

TOKEN = "ctp_abcdefghijkl_" + "x" * 43
NAME = "tiny-llama/gptq-w3-g128/wiki"
DEEP: list = [1]
for _ in range(20):
    DEEP = [DEEP]
PATHS = ["/etc/passwd", "../../victim", "../" * 8 + "tmp/victim", "blobs/../../victim", "a" * 63, "A" * 64,
         "g" * 64, "0" * 64 + "/", "", None, 7]


@pytest.fixture
def published(tmp_path: Path) -> tuple[dict, bytes]:
    """A real record (as the server writes it) and its artifact bytes."""
    registry = open_registry(f"sqlite:///{tmp_path / 'source.db'}", (tmp_path / "objects").as_uri())
    upgrade(registry.db.engine)
    data = artifact_bytes(seed=3)
    record = registry.publish_bytes(data).prompt.to_dict()
    registry.db.dispose()
    return record, data


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the cache that no answer may touch."""
    path = tmp_path / "victim"
    path.write_text("keep me")
    return path


def _client(url: str, tmp_path: Path, **env: str) -> Client:
    return Client(Settings.from_env({"CTPREG_HOME": str(tmp_path / "home"), "CTPREG_CACHE_DIR": str(
        tmp_path / "home" / "cache"), "CTPREG_URL": url, "CTPREG_TOKEN": TOKEN, **env}))


def _cache_files(tmp_path: Path) -> list[str]:
    root = tmp_path / "home" / "cache"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _serve_prompt(server, record: dict, data: bytes) -> None:
    server.answer("/v1/prompt", json_answer(record))
    server.answer(f"/v1/objects/{record['sha256']}", raw_answer(data, content_type="application/octet-stream"))


@pytest.mark.parametrize("sha", PATHS)
def test_a_sha256_that_is_a_path_is_refused_and_no_file_is_touched(published, victim, tmp_path, sha) -> None:
    record, data = published
    with hostile_server() as server:
        _serve_prompt(server, {**record, "sha256": sha}, data)
        server.answer("/v1/candidates", json_answer([{"tier": 2, "explanation": "x", "prompt": {
            **record, "sha256": sha}}]))
        client = _client(server.url, tmp_path)
        for call in (lambda: client.fetch(f"{NAME}:1"), lambda: client.fetch(NAME),
                     lambda: client.resolve("tiny-llama", method="gptq", bits=3)):
            with pytest.raises(MalformedAnswer):
                call()
    assert victim.read_text() == "keep me"
    assert _cache_files(tmp_path) == []
    assert not any("victim" in request or "passwd" in request for request in server.requests)


def test_ctpreg_fetch_with_a_hostile_answer_exits_16_with_one_line(published, victim, tmp_path) -> None:
    record, data = published
    with hostile_server() as server:
        _serve_prompt(server, {**record, "sha256": str(victim)}, data)
        env = {**os.environ, "CTPREG_HOME": str(tmp_path / "home"), "CTPREG_URL": server.url, "CTPREG_TOKEN": TOKEN}
        done = subprocess.run([sys.executable, "-m", "ctpreg.cli.main", "fetch", f"{NAME}:1"], env=env,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 16, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("change", [
    {"version": 2}, {"name": "other/prompt"}, {"aliases": []},
])
def test_a_record_for_another_ref_is_refused(published, tmp_path, change) -> None:
    record, data = published
    with hostile_server() as server:
        _serve_prompt(server, {**record, **change}, data)
        client = _client(server.url, tmp_path)
        for ref in (f"{NAME}:1", NAME, f"{NAME}@latest"):
            answered = {**record, **change}
            if change == {"aliases": []} and ref.endswith(":1"):
                continue  # a version ref does not depend on aliases
            if "version" in change and not ref.endswith(":1"):
                answered = {**answered, "aliases": []}  # version 2 without @latest answers no alias ref
                server.answer("/v1/prompt", json_answer(answered))
            with pytest.raises(MalformedAnswer, match="not what"):
                client.fetch(ref)
    assert _cache_files(tmp_path) == []


def test_a_sha_prefix_answered_with_another_object_is_refused(published, tmp_path) -> None:
    record, data = published
    with hostile_server() as server:
        _serve_prompt(server, record, data)
        prefix = ("0" if record["sha256"][0] != "0" else "1") * 12
        with pytest.raises(MalformedAnswer):
            _client(server.url, tmp_path).fetch(prefix)


def test_a_cached_entry_for_another_ref_is_not_an_answer_offline(published, tmp_path) -> None:
    record, data = published
    with hostile_server() as server:
        _serve_prompt(server, record, data)
        client = _client(server.url, tmp_path)
        client.fetch(f"{NAME}:1")
    key = {"ref": f"{NAME}:1"}
    client.cache.put_ref("prompts", {"ref": f"{NAME}:2"}, client.cache.get_ref("prompts", key))
    offline = _client("http://127.0.0.1:9", tmp_path, CTPREG_OFFLINE="1")
    assert offline.fetch(f"{NAME}:1").data == data
    with pytest.raises(CtpregError, match="never fetched"):
        offline.fetch(f"{NAME}:2")


@pytest.mark.parametrize("field,value", [
    ("size_bytes", 10**12), ("size_bytes", -1), ("num_virtual_tokens", 10**9), ("hidden_size", 0),
    ("object_key", "../../victim"), ("compression", "gptq-w99"), ("dtype", "pickle"), ("created_by", "\x1b[2Jx"),
    ("name", "../../etc"), ("model_fingerprint", "sha256:nope"), ("metrics", {"a": DEEP}),
    ("deprecated", "no"), ("version", True), ("created_at", "yesterday"), ("aliases", ["la test"]),
])
def test_every_field_of_a_record_is_checked(published, tmp_path, field, value) -> None:
    record, data = published
    with hostile_server() as server:
        _serve_prompt(server, {**record, field: value}, data)
        with pytest.raises(MalformedAnswer, match=field):
            _client(server.url, tmp_path).fetch(f"{NAME}:1")
    assert _cache_files(tmp_path) == []


def test_json_answers_are_bounded_in_size_however_they_are_sent(tmp_path) -> None:
    limit = 64 << 10
    with hostile_server() as server:
        client = _client(server.url, tmp_path, CTPREG_MAX_ANSWER_BYTES=str(limit))
        server.answer("/v1/prompt", raw_answer(b"[" * (limit + 1)))
        with pytest.raises(MalformedAnswer, match="more than"):
            client.fetch(f"{NAME}:1")
        server.answer("/v1/prompt", raw_answer(b"", content_length=str(10**12)))
        with pytest.raises(MalformedAnswer, match="announced"):
            client.fetch(f"{NAME}:1")
        server.sent = 0
        server.answer("/v1/prompt", lambda _q: raw_answer(iter(lambda: b" " * 4096, None)))  # endless, chunked
        with pytest.raises(MalformedAnswer, match="more than"):
            client.fetch(f"{NAME}:1")
        assert server.sent < 32 << 20  # what loopback socket buffers took before the hang-up, not the endless body


def test_deep_nesting_nan_and_duplicate_keys_are_refused(published, tmp_path) -> None:
    record, _ = published
    text = json_answer(record)[2].decode()
    with hostile_server() as server:
        client = _client(server.url, tmp_path)
        for body in (b"[" * 100_000 + b"]" * 100_000, text.replace('"ppl_full": 20.0', '"ppl_full": NaN').encode(),
                     text.replace('{"id"', '{"sha256": "' + "0" * 64 + '", "id"', 1).encode(), b"\xff\xfe",
                     b"[]", b"null"):
            server.answer("/v1/prompt", raw_answer(body))
            with pytest.raises(MalformedAnswer):
                client.fetch(f"{NAME}:1")


def test_compressed_answers_are_refused_not_inflated(published, tmp_path) -> None:
    import gzip

    record, _ = published
    with hostile_server() as server:
        server.answer("/v1/prompt", raw_answer(gzip.compress(b" " * (50 << 20)), content_encoding="gzip"))
        with pytest.raises(MalformedAnswer, match="compressed"):
            _client(server.url, tmp_path).fetch(f"{NAME}:1")


@pytest.mark.parametrize("body", ["endless", "short", "tampered", "announced"])
def test_an_object_is_cut_at_its_declared_size_and_the_cache_stays_as_it_was(published, tmp_path, body) -> None:
    record, data = published
    answers = {
        "endless": raw_answer(iter(lambda: data, None)),
        "short": raw_answer(data[:-10]),
        "tampered": raw_answer(data[:-1] + bytes([data[-1] ^ 1])),
        "announced": raw_answer(data, content_length=str(len(data) + 1)),
    }
    with hostile_server() as server:
        _serve_prompt(server, record, data)
        server.answer(f"/v1/objects/{record['sha256']}", answers[body])
        with pytest.raises((IntegrityError, StoreError)):
            _client(server.url, tmp_path).fetch(f"{NAME}:1")
        if body == "endless":
            assert server.sent < 32 << 20  # socket buffers, not the endless body
    assert [name for name in _cache_files(tmp_path) if name.startswith("blobs")] == []


def test_a_trickling_answer_is_bounded_in_total_time(tmp_path) -> None:
    def trickle():
        for _ in range(100):
            time.sleep(0.1)
            yield b" "

    with hostile_server() as server:
        server.answer("/v1/prompt", lambda _q: raw_answer(trickle()))
        remote = RemoteRegistry(server.url, TOKEN, total_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(StoreError, match="took over"):
            remote.get(f"{NAME}:1")
        assert time.monotonic() - started < 3


def test_error_messages_from_the_server_are_bounded_printable_text(tmp_path) -> None:
    with hostile_server() as server:
        message = "\x1b[2J\x1b]0;owned\x07" + "A" * 100_000
        server.answer("/v1/prompt", json_answer({"error": {"type": "NotFound", "message": message}}, 404))
        with pytest.raises(CtpregError) as raised:
            _client(server.url, tmp_path).fetch(f"{NAME}:1")
    shown = str(raised.value)
    assert shown.isprintable() and len(shown) <= 500 and raised.value.exit_code == 5


def test_an_answer_of_another_embedding_space_is_refused_before_use(published, tmp_path) -> None:
    record, _ = published
    other = artifact_bytes(seed=3, fp=FP_B)  # real bytes, but of another model than the record says
    from ctpreg.registry.digest import sha256_hex

    sha = sha256_hex(other)
    lying = {**record, "sha256": sha, "size_bytes": len(other), "object_key": f"prompts/{sha[:2]}/{sha}.safetensors"}
    with hostile_server() as server:
        _serve_prompt(server, lying, other)
        prompt = _client(server.url, tmp_path).fetch(f"{NAME}:1")
        with pytest.raises(IntegrityError, match="embedding space|fingerprint"):
            prompt.numpy()


@pytest.mark.parametrize("url", ["http://10.1.2.3:8200", "http://registry.example.com", "http://127.0.0.1.example.com"])
def test_the_token_is_never_sent_in_clear_text_off_this_machine(url) -> None:
    with pytest.raises(InvalidInput, match="clear text"):
        RemoteRegistry(url, TOKEN)
    RemoteRegistry(url, None)  # no token, nothing to protect
    RemoteRegistry(url.replace("http://", "https://"), TOKEN)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8200", "http://localhost:8200", "http://[::1]:8200",
                                 "http://127.9.9.9"])
def test_loopback_may_use_plain_http(url) -> None:
    RemoteRegistry(url, TOKEN)


def test_the_insecure_opt_in_warns_on_every_use(caplog) -> None:
    settings = Settings.from_env({"CTPREG_URL": "http://10.1.2.3:8200", "CTPREG_TOKEN": TOKEN,
                                  "CTPREG_ALLOW_INSECURE_TOKEN": "1", "CTPREG_HOME": "/nonexistent"})
    with caplog.at_level(logging.WARNING):
        RemoteRegistry.from_settings(settings)
        RemoteRegistry.from_settings(settings)
    assert [r.message.count("clear text") for r in caplog.records] == [1, 1]


def test_the_cli_refuses_a_clear_text_token_with_one_line(tmp_path) -> None:
    env = {**os.environ, "CTPREG_HOME": str(tmp_path), "CTPREG_URL": "http://10.1.2.3:8200", "CTPREG_TOKEN": TOKEN}
    done = subprocess.run([sys.executable, "-m", "ctpreg.cli.main", "list"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "clear text" in done.stderr and "Traceback" not in done.stderr


def test_credentials_in_the_url_are_masked_everywhere(tmp_path) -> None:
    url = "http://alice:s3cret@127.0.0.1:9"  # nothing listens on the discard port
    settings = Settings.from_env({"CTPREG_URL": url, "CTPREG_HOME": str(tmp_path)})
    assert "s3cret" not in repr(settings)
    with pytest.raises(StoreError) as raised:
        RemoteRegistry.from_settings(settings).get(f"{NAME}:1")
    assert "s3cret" not in str(raised.value) and "***@127.0.0.1:9" in str(raised.value)
    with pytest.raises(InvalidInput) as bad:
        Settings.from_env({"CTPREG_URL": "ftp://alice:s3cret@host", "CTPREG_HOME": str(tmp_path)})
    assert "s3cret" not in str(bad.value)
    env = {**os.environ, "CTPREG_HOME": str(tmp_path), "CTPREG_URL": url}
    done = subprocess.run([sys.executable, "-m", "ctpreg.cli.main", "list"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 8 and "s3cret" not in done.stderr + done.stdout
