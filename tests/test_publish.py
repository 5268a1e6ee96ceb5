"""Publish, versions, aliases, deprecation and references, on SQLite and PostgreSQL."""

from pathlib import Path

import pytest
from sqlalchemy import text

from ctpreg.registry.errors import Conflict, InvalidInput, NotFound
from ctpreg.registry.records import BaseModelRecord
from ctpreg.registry.service import Registry
from helpers import FP_A, FP_B, artifact_bytes, write_artifact_file


def _rows(registry: Registry) -> int:
    with registry.db.session() as session:
        return session.execute(text("SELECT count(*) FROM prompt")).scalar()


def _objects(store_dir: Path) -> list[Path]:
    return [p for p in store_dir.rglob("*") if p.is_file()] if store_dir.exists() else []


def test_publish_assigns_versions_and_moves_latest(registry: Registry, tmp_path: Path) -> None:
    first = registry.publish(write_artifact_file(tmp_path / "a.safetensors", seed=1))
    assert first.created and first.prompt.version == 1
    assert first.prompt.name == "tiny-llama/gptq-w3-g128/wiki"
    second = registry.publish(write_artifact_file(tmp_path / "b.safetensors", seed=2))
    assert second.prompt.version == 2
    assert registry.get("tiny-llama/gptq-w3-g128/wiki").version == 2
    assert registry.get("tiny-llama/gptq-w3-g128/wiki@latest").aliases == ("latest",)
    assert registry.get("tiny-llama/gptq-w3-g128/wiki:1").sha256 == first.prompt.sha256
    assert registry.get(first.prompt.sha256[:10]).version == 1


def test_publish_is_idempotent_on_content(registry: Registry, tmp_path: Path, store_dir: Path) -> None:
    path = write_artifact_file(tmp_path / "a.safetensors", seed=1)
    first = registry.publish(path)
    again = registry.publish(path)
    assert not again.created
    assert (again.prompt.version, again.prompt.sha256) == (first.prompt.version, first.prompt.sha256)
    assert _rows(registry) == 1
    assert len(_objects(store_dir)) == 1


def test_same_content_under_two_names_shares_one_object(registry: Registry, store_dir: Path) -> None:
    data = artifact_bytes(seed=3)
    a = registry.publish_bytes(data, name="team-a/prompt")
    b = registry.publish_bytes(data, name="team-b/prompt")
    assert a.prompt.object_key == b.prompt.object_key
    assert len(_objects(store_dir)) == 1


def test_publish_registers_the_model_and_checks_it_later(registry: Registry, store_dir: Path) -> None:
    registry.publish_bytes(artifact_bytes(seed=1))
    model = registry.get_model("tiny-llama")
    assert model is not None and model.fingerprint == FP_A and model.hidden_size == 8
    rows, objects = _rows(registry), len(_objects(store_dir))
    with pytest.raises(Conflict, match="fingerprint"):
        registry.publish_bytes(artifact_bytes(seed=2, fp=FP_B))
    with pytest.raises(Conflict, match="hidden size 8"):
        registry.publish_bytes(artifact_bytes(seed=2, hidden=16))
    assert (_rows(registry), len(_objects(store_dir))) == (rows, objects)


def test_models_add_then_list(registry: Registry) -> None:
    registry.add_model(BaseModelRecord(name="llama-7b", fingerprint=FP_B, hidden_size=4096, vocab_size=32000))
    registry.add_model(BaseModelRecord(name="llama-7b", fingerprint=FP_B, hidden_size=4096, vocab_size=32000))
    assert [m.name for m in registry.list_models()] == ["llama-7b"]
    with pytest.raises(Conflict):
        registry.add_model(BaseModelRecord(name="llama-7b", fingerprint=FP_A, hidden_size=4096, vocab_size=32000))


def test_aliases_and_unknown_references(registry: Registry) -> None:
    registry.publish_bytes(artifact_bytes(seed=1), name="p")
    registry.publish_bytes(artifact_bytes(seed=2), name="p")
    assert registry.set_alias("p:1", "prod").version == 1
    assert registry.get("p@prod").version == 1
    registry.publish_bytes(artifact_bytes(seed=3), name="p")
    assert registry.get("p@prod").version == 1, "only latest moves by itself"
    assert registry.get("p").version == 3
    with pytest.raises(NotFound, match="no alias 'staging'"):
        registry.get("p@staging")
    with pytest.raises(NotFound, match="no version 9"):
        registry.get("p:9")
    with pytest.raises(NotFound, match="no prompt named 'q'"):
        registry.get("q")
    with pytest.raises(NotFound, match="no prompt has a sha256"):
        registry.get("0000000000")
    with pytest.raises(InvalidInput, match="latest"):
        registry.set_alias("p:1", "latest")


def test_deprecate_moves_latest_back_and_hides_from_resolve(registry: Registry) -> None:
    registry.publish_bytes(artifact_bytes(seed=1), name="p")
    registry.publish_bytes(artifact_bytes(seed=2), name="p")
    assert registry.deprecate("p:2").deprecated
    assert registry.get("p").version == 1
    assert registry.get("p:2").deprecated
    registry.deprecate("p:1")
    with pytest.raises(NotFound):
        registry.get("p")


def test_list_filters(registry: Registry) -> None:
    registry.publish_bytes(artifact_bytes(seed=1, compression="gptq-w3-g128"))
    registry.publish_bytes(artifact_bytes(seed=2, compression="gptq-w4-g128", dataset="news"))
    registry.publish_bytes(artifact_bytes(seed=3, compression="sparsegpt-s50"))
    assert len(registry.list_prompts()) == 3
    assert [r.compression for r in registry.list_prompts(bits=4)] == ["gptq-w4-g128"]
    assert [r.compression for r in registry.list_prompts(methods=["sparsegpt"])] == ["sparsegpt-s50"]
    assert [r.dataset for r in registry.list_prompts(dataset="news")] == ["news"]
    assert registry.list_prompts(model="other") == []


def test_bad_names_write_nothing(registry: Registry, store_dir: Path) -> None:
    for name in ["../escape", "a/../../b", "/abs"]:
        with pytest.raises(InvalidInput):
            registry.publish_bytes(artifact_bytes(seed=1), name=name)
    assert _rows(registry) == 0 and _objects(store_dir) == []


def test_full_sha_of_bytes_shared_by_two_names_resolves(registry: Registry) -> None:
    data = artifact_bytes(seed=8)
    first = registry.publish_bytes(data, name="a/p").prompt
    registry.publish_bytes(data, name="b/p")
    assert registry.get(first.sha256).sha256 == first.sha256
    assert registry.get(first.sha256[:12]).name == "a/p"


def test_hex_only_names_are_refused(registry: Registry) -> None:
    with pytest.raises(InvalidInput, match="read as a sha256 prefix"):
        registry.publish_bytes(artifact_bytes(seed=1), name="20240101")
    assert registry.publish_bytes(artifact_bytes(seed=1), name="v20240101").prompt.version == 1
