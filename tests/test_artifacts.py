import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from ctpreg.registry.artifacts import (
    PromptMetadata, parse_artifact, read_artifact, serialize_artifact, write_artifact,
)
from ctpreg.registry.digest import sha256_hex
from ctpreg.registry.errors import InvalidArtifact, InvalidInput
from ctpreg.registry.recovery import gap_recovered
from helpers import artifact_bytes, metadata


def test_round_trip_keeps_tensor_and_metadata(tmp_path: Path) -> None:
    meta = metadata(task="qa")
    embeddings = np.arange(32, dtype=np.float32).reshape(4, 8)
    sha = write_artifact(tmp_path / "p.safetensors", embeddings, meta)
    artifact, data = read_artifact(tmp_path / "p.safetensors")
    assert sha == sha256_hex(data)
    np.testing.assert_array_equal(artifact.embeddings, embeddings)
    assert artifact.metadata == meta
    assert artifact.dtype == "float32"


def test_float16_is_kept() -> None:
    data = serialize_artifact(np.ones((4, 8)), metadata(), dtype="float16")
    assert parse_artifact(data).dtype == "float16"


def _raw(tensors: dict, meta: dict[str, str]) -> bytes:
    return save(tensors, metadata=meta)


GOOD_META = metadata().to_strings()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (pickle.dumps({"prompt_embeddings": [1.0, 2.0]}), "not a safetensors file"),
        (artifact_bytes()[:-7], "not a readable safetensors file"),
        (artifact_bytes()[:5], "truncated"),
        (_raw({"embeddings": np.ones((4, 8), np.float32)}, GOOD_META), "exactly one tensor named 'prompt_embeddings'"),
        (_raw({"prompt_embeddings": np.ones(8, np.float32)}, GOOD_META), "must be 2-D"),
        (_raw({"prompt_embeddings": np.ones((1, 4, 8), np.float32)}, GOOD_META), "must be 2-D"),
        (_raw({"prompt_embeddings": np.ones((5, 8), np.float32)}, GOOD_META), "disagrees with metadata"),
        (_raw({"prompt_embeddings": np.full((4, 8), np.nan, np.float32)}, GOOD_META), "NaN or Inf"),
        (_raw({"prompt_embeddings": np.full((4, 8), np.inf, np.float32)}, GOOD_META), "NaN or Inf"),
        (_raw({"prompt_embeddings": np.ones((4, 8), np.float32)}, {"format": "ctpreg-prompt/1"}), "missing keys"),
        (_raw({"prompt_embeddings": np.ones((4, 8), np.float32)}, {**GOOD_META, "format": "x/9"}),
         "unsupported artifact format"),
        (_raw({"prompt_embeddings": np.ones((4, 8), np.float32)}, {**GOOD_META, "compression": "gptq-w5-g128"}),
         "supports bits"),
        (_raw({"prompt_embeddings": np.ones((4, 8), np.float32)}, {**GOOD_META, "compression": "zip-w3"}), "malformed"),
        (_raw({"prompt_embeddings": np.ones((4, 8), np.float32)}, {**GOOD_META, "model_fingerprint": "abc"}),
         "invalid fingerprint"),
        (_raw({"prompt_embeddings": np.ones((4, 8), np.float32)}, {**GOOD_META, "metrics": "[1]"}), "JSON object"),
        (_raw({"prompt_embeddings": np.ones((4, 8), np.int32)}, GOOD_META), "dtype int32 unsupported"),
    ],
)
def test_bad_artifacts_fail_with_one_clear_line(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArtifact, match=message) as info:
        parse_artifact(data)
    assert "\n" not in str(info.value)


def test_header_length_lie_is_caught() -> None:
    data = struct.pack("<Q", 10**9) + b"{}"
    with pytest.raises(InvalidArtifact, match="header length exceeds"):
        parse_artifact(data)


def test_missing_file_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        read_artifact(tmp_path / "absent.safetensors")


def test_serialize_refuses_wrong_shape_and_non_finite() -> None:
    with pytest.raises(InvalidArtifact, match="disagrees"):
        serialize_artifact(np.ones((3, 8)), metadata())
    with pytest.raises(InvalidArtifact, match="NaN"):
        serialize_artifact(np.full((4, 8), np.nan), metadata())


def test_metadata_strings_are_json_where_structured() -> None:
    strings = metadata().to_strings()
    assert json.loads(strings["metrics"])["ppl_compressed"] == 40.0
    assert PromptMetadata.from_strings(strings) == metadata()


def test_gap_recovered() -> None:
    assert gap_recovered({"ppl_full": 20, "ppl_compressed": 40, "ppl_prompted": 25}) == pytest.approx(0.75)
    assert gap_recovered({"ppl_full": 20, "ppl_compressed": 20, "ppl_prompted": 19}) is None
    assert gap_recovered({}) is None


def test_serialization_is_deterministic() -> None:
    assert len({artifact_bytes(seed=4) for _ in range(20)}) == 1
    parse_artifact(artifact_bytes(seed=4))


def test_unsupported_dtypes_and_odd_digits_are_clear_errors() -> None:
    import torch
    from safetensors.torch import save

    good = metadata().to_strings()
    bf16 = save({"prompt_embeddings": torch.ones(4, 8, dtype=torch.bfloat16)}, metadata=good)
    with pytest.raises(InvalidArtifact, match="dtype BF16; store prompts as float32 or float16"):
        parse_artifact(bf16)
    superscript = _raw({"prompt_embeddings": np.ones((4, 8), np.float32)}, {**good, "num_virtual_tokens": "\u00b2"})
    with pytest.raises(InvalidArtifact, match="not a positive integer"):
        parse_artifact(superscript)
