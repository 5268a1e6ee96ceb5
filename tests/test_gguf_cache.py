"""The converted-GGUF folder: written whole or not at all, and loaded only while every file hashes as recorded
(the packaged model's own round trip is in test_real_model)."""

import json
from pathlib import Path

import pytest

from ctpreg.trainer.catalog import ModelSource
from ctpreg.trainer.gguf_cache import MANIFEST, save_converted, verified
from tiny import tiny_llama

SOURCE = ModelSource("tiny", "/models", gguf_file="tiny.Q4_1.gguf")


@pytest.fixture
def converted(tmp_path: Path) -> Path:
    loaded = tiny_llama()
    folder = tmp_path / "models" / "tiny" / "gguf-abc"
    folder.parent.mkdir(parents=True)
    save_converted(loaded.model, loaded.tokenizer, SOURCE, folder)
    return folder


def test_a_finished_conversion_records_every_file_and_verifies(converted: Path) -> None:
    manifest = json.loads((converted / MANIFEST).read_text())
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    assert manifest["gguf_file"] == "tiny.Q4_1.gguf" and manifest["source"] == SOURCE.describe()
    assert verified(converted)
    assert [p.name for p in converted.parent.iterdir()] == [converted.name], "no partial folder is left behind"


@pytest.mark.parametrize("damage", ["flip a weight byte", "drop the tokenizer", "truncate the manifest", "no files"])
def test_a_damaged_conversion_is_not_loaded(converted: Path, damage: str) -> None:
    if damage == "flip a weight byte":
        weights = converted / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
    elif damage == "drop the tokenizer":
        (converted / "tokenizer.json").unlink()
    elif damage == "truncate the manifest":
        (converted / MANIFEST).write_text((converted / MANIFEST).read_text()[:40])
    else:
        (converted / MANIFEST).write_text(json.dumps({"files": {}}))
    assert not verified(converted)


def test_a_missing_folder_is_not_verified(tmp_path: Path) -> None:
    assert not verified(tmp_path / "nothing-here")


def test_a_damaged_conversion_is_replaced_and_a_finished_one_kept(converted: Path) -> None:
    (converted / "model.safetensors").write_bytes(b"truncated")
    loaded = tiny_llama(seed=1)
    save_converted(loaded.model, loaded.tokenizer, SOURCE, converted)
    assert verified(converted)
    kept = (converted / MANIFEST).read_text()
    other = tiny_llama(seed=2)  # a concurrent writer that finished second: the first folder stays
    save_converted(other.model, other.tokenizer, SOURCE, converted)
    assert (converted / MANIFEST).read_text() == kept and verified(converted)
    assert [p.name for p in converted.parent.iterdir()] == [converted.name]
