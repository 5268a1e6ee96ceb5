"""Hypothesis against the HTTP client: a fake registry answers with random mutations of a real record, random
bodies for its object and random damage to the JSON text; whatever it sends, the client either returns the prompt
that was asked for, verified, or raises a ``CtpregError``, and nothing outside its cache folder changes."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ctpreg.registry import Client, Settings
from ctpreg.registry.db.migrate import upgrade
from ctpreg.registry.digest import sha256_hex
from ctpreg.registry.errors import CtpregError
from ctpreg.registry.refs import parse_ref
from helpers import artifact_bytes, open_registry
from hostile import hostile_server, raw_answer

TOKEN = "ctp_abcdefghijkl_" + "x" * 43
NAME = "tiny-llama/gptq-w3-g128/wiki"
REFS = [f"{NAME}:1", NAME, f"{NAME}@latest"]
HEX = re.compile(r"[0-9a-f]{64}")


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
hostile_values = st.one_of(
    json_values,
    st.sampled_from(["/etc/passwd", "../../victim", "../" * 10 + "victim", "a" * 63, "A" * 64, "0" * 64 + "/x",
                     "\x1b[2J", "\ud800", "la test", "", "gptq-w99", "pickle", "prompts/../victim"]),
    st.integers(0, 80).map(_nested),
)
# Half the draws leave each part intact, so accepted answers are exercised too.
object_bodies = st.just("ok") | st.sampled_from(["endless", "short", "long", "tampered", "announced", "gzip", "empty"])
text_damage = st.just("none") | st.sampled_from(["nan", "duplicate", "truncate", "bom", "deep"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """One real record and artifact, one hostile server, and files outside every cache that must never change."""
    root = tmp_path_factory.mktemp("fuzz")
    registry = open_registry(f"sqlite:///{root / 'source.db'}", (root / "objects").as_uri())
    upgrade(registry.db.engine)
    data = artifact_bytes(seed=11)
    record = registry.publish_bytes(data).prompt.to_dict()
    registry.db.dispose()
    victim = root / "victim"
    victim.write_text("keep me")
    with hostile_server() as server:
        yield root, record, data, victim, server


def _damaged(text: str, damage: str) -> str:
    if damage == "nan":
        return text.replace("20.0", "NaN", 1)
    if damage == "duplicate":
        return text.replace('{"id"', '{"sha256": "' + "0" * 64 + '", "id"', 1)
    if damage == "truncate":
        return text[: len(text) // 2]
    if damage == "bom":
        return "\ufeff" + text
    if damage == "deep":
        return text.replace('"metrics": {', '"metrics": {"d": ' + "[" * 5000 + "]" * 5000 + ",", 1)
    return text


def _object_answer(body: str, data: bytes):
    import gzip

    return {
        "ok": raw_answer(data), "endless": raw_answer(iter(lambda: data, None)), "short": raw_answer(data[:-7]),
        "long": raw_answer(data + b"\0" * 64), "tampered": raw_answer(data[:-1] + bytes([data[-1] ^ 1])),
        "announced": raw_answer(data, content_length=str(len(data) * 2)),
        "gzip": raw_answer(gzip.compress(data), content_encoding="gzip"), "empty": raw_answer(b""),
    }[body]


def _outside_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but the caches and the source registry's DB."""
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()
            and not p.relative_to(root).parts[0].startswith(("cache-", "home", "source.db"))}


def _check_cache(cache: Path) -> None:
    """Only entries the cache itself names: blobs by digest, refs by key; no temp file left behind."""
    for path in cache.rglob("*"):
        if path.is_dir():
            continue
        relative = path.relative_to(cache).parts
        assert relative[0] in ("blobs", "refs"), relative
        assert HEX.fullmatch(path.name.removesuffix(".json")), relative


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(field=st.none() | st.sampled_from(["sha256", "size_bytes", "object_key", "name", "version", "aliases", "model",
                              "model_fingerprint", "compression", "dtype", "num_virtual_tokens", "hidden_size",
                              "metrics", "created_at", "created_by", "deprecated", "unknown"]),
       value=hostile_values, body=object_bodies, damage=text_damage, ref=st.sampled_from(REFS),
       resolve=st.booleans())
def test_no_answer_escapes_the_error_tree_or_the_cache(world, field, value, body, damage, ref, resolve) -> None:
    root, record, data, victim, server = world
    answered = dict(record) if field is None else {**record, field: value}
    text = _damaged(json.dumps(answered, ensure_ascii=False), damage)
    server.answer("/v1/prompt", raw_answer(text.encode("utf-8", "surrogatepass")))
    server.answer("/v1/candidates", raw_answer(f'[{{"tier": 2, "explanation": "x", "prompt": {text}}}]'.encode(
        "utf-8", "surrogatepass")))
    sha = answered.get("sha256") if isinstance(answered.get("sha256"), str) else record["sha256"]
    server.answer(f"/v1/objects/{sha}", _object_answer(body, data))
    before = _outside_files(root)
    cache = Path(tempfile.mkdtemp(dir=root, prefix="cache-"))
    client = Client(Settings.from_env({"CTPREG_HOME": str(root / "home"), "CTPREG_CACHE_DIR": str(cache),
                                       "CTPREG_URL": server.url, "CTPREG_TOKEN": TOKEN}))
    try:
        prompt = client.resolve("tiny-llama", method="gptq", bits=3) if resolve else client.fetch(ref)
    except CtpregError as exc:
        event(f"refused: {type(exc).__name__}")
    else:
        event("accepted")  # accepted: exactly the prompt asked for, verified, inside the cache
        assert sha256_hex(prompt.data) == prompt.record.sha256 == record["sha256"]
        assert resolve or prompt.record.answers(parse_ref(ref))
        assert prompt.path.parent == cache / "blobs" and prompt.path.read_bytes() == data
    assert victim.read_text() == "keep me" and _outside_files(root) == before
    _check_cache(cache)
