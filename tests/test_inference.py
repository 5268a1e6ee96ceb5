"""Compression inferred from what a checkpoint records (configs as GPTQModel, transformers, bitsandbytes,
compressed-tensors and llmcompressor write them) and from its weights; flags that contradict it are refused."""

import numpy as np
import pytest
import torch

from ctpreg.registry.errors import InvalidInput
from ctpreg.registry.inference import CheckpointFacts, SparsityStats, check_flags, infer_compression, measure_sparsity


def gptq_config(bits: int, group: int) -> dict:
    # the keys GPTQModel 7.6 writes into config.json (abridged: meta omitted)
    return {"bits": bits, "group_size": group, "desc_act": False, "sym": True, "quant_method": "gptq",
            "checkpoint_format": "gptq", "pack_dtype": "int32"}


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_gptq_bits_and_group_size(bits: int, group: int) -> None:
    spec = infer_compression(CheckpointFacts(gptq_config(bits, group)))
    assert spec.canonical == f"gptq-w{bits}-g{group}"


def test_gptq_sparsity_only_from_the_record() -> None:
    stats = SparsityStats(sparsity=0.3)  # low-bit GPTQ rounds many weights to zero: that is not pruning
    assert infer_compression(CheckpointFacts(gptq_config(3, 128)), sparsity=stats).canonical == "gptq-w3-g128"
    recorded = CheckpointFacts(gptq_config(4, 128), recorded="gptq-w4-g128+sparsegpt-s50")
    assert infer_compression(recorded).canonical == "gptq-w4-g128+sparsegpt-s50"


@pytest.mark.parametrize(("config", "expected"), [
    ({"quant_method": "gptq", "bits": 5, "group_size": 128}, "supports bits"),
    ({"quant_method": "gptq", "bits": 4, "group_size": -1}, "per-channel"),
    ({"quant_method": "gptq", "bits": "4", "group_size": 128}, "must be an integer"),
    ({"quant_method": "awq", "bits": 4}, "'awq'"),
    ({"quant_method": "bitsandbytes"}, "exactly one of"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "int2"}, "unknown bitsandbytes"),
])
def test_what_cannot_be_told_is_refused_clearly(config: dict, expected: str) -> None:
    with pytest.raises(InvalidInput, match=expected):
        infer_compression(CheckpointFacts(config))


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, "bnb-nf4"),
    ({"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"}, "bnb-fp4"),
    ({"load_in_8bit": True}, "bnb-int8"),
])
def test_bitsandbytes_from_transformers_own_config(kwargs: dict, expected: str) -> None:
    from transformers import BitsAndBytesConfig

    assert infer_compression(CheckpointFacts(BitsAndBytesConfig(**kwargs).to_dict())).canonical == expected


def compressed_tensors(sparsity: float, structure: str = "unstructured", weights: dict | None = None) -> dict:
    config = {"quant_method": "compressed-tensors", "format": "dense",
              "sparsity_config": {"format": "dense", "global_sparsity": sparsity, "sparsity_structure": structure,
                                  "targets": ["Linear"], "ignore": ["lm_head"]}}
    if weights is not None:
        config["config_groups"] = {"group_0": {"targets": ["Linear"], "weights": weights}}
    return config


def test_compressed_tensors_sparse_with_its_recipe() -> None:
    facts = CheckpointFacts(compressed_tensors(0.4875), recipe_methods=("sparsegpt",))
    assert infer_compression(facts).canonical == "sparsegpt-s48.75"
    measured = SparsityStats(sparsity=0.50004)
    assert infer_compression(facts, sparsity=measured).canonical == "sparsegpt-s50", "measured beats recorded"
    two_four = CheckpointFacts(compressed_tensors(0.5, "2:4"), recipe_methods=("wanda",))
    assert infer_compression(two_four).canonical == "wanda-n2m4"
    with pytest.raises(InvalidInput, match="does not record how"):
        infer_compression(CheckpointFacts(compressed_tensors(0.5)))
    assert (
        infer_compression(CheckpointFacts(compressed_tensors(0.5)), method_hint="magnitude").canonical
        == "magnitude-s50"
    )
    with pytest.raises(InvalidInput, match="disagrees with the checkpoint's recipe"):
        infer_compression(facts, method_hint="wanda")


def test_compressed_tensors_quantized_needs_the_algorithm() -> None:
    weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 128}
    config = compressed_tensors(0.5, weights=weights)
    with pytest.raises(InvalidInput, match="cannot tell which quantizer"):
        infer_compression(CheckpointFacts(config, recipe_methods=("sparsegpt",)))
    joint = infer_compression(CheckpointFacts(config, recipe_methods=("sparsegpt", "gptq")))
    assert joint.canonical == "gptq-w4-g128+sparsegpt-s50"
    dense_quant = {k: v for k, v in config.items() if k != "sparsity_config"}
    assert infer_compression(CheckpointFacts(dense_quant, recipe_methods=("gptq",))).canonical == "gptq-w4-g128"


def test_plain_folders_by_measured_sparsity() -> None:
    assert infer_compression(CheckpointFacts(), sparsity=SparsityStats(0.0)).canonical == "none"
    pruned = CheckpointFacts(recipe_methods=("sparsegpt",))
    assert infer_compression(pruned, sparsity=SparsityStats(0.5002)).canonical == "sparsegpt-s50"
    assert infer_compression(pruned, sparsity=SparsityStats(0.5, nm=(2, 4))).canonical == "sparsegpt-n2m4"
    with pytest.raises(InvalidInput, match="pass --method sparsegpt, wanda or magnitude"):
        infer_compression(CheckpointFacts(), sparsity=SparsityStats(0.7))
    with pytest.raises(InvalidInput, match="could not be measured"):
        infer_compression(CheckpointFacts())


def test_measured_sparsity_matches_numpy_and_finds_n_m() -> None:
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((16, 32)).astype(np.float32)
    unstructured = dense * (rng.random((16, 32)) > 0.6)
    two_four = dense.copy().reshape(16, 8, 4)
    two_four[:, :, :2] = 0
    two_four = two_four.reshape(16, 32)
    stats = measure_sparsity([torch.from_numpy(unstructured), torch.zeros(3, dtype=torch.uint8).view(1, 3)])
    assert stats.sparsity == pytest.approx(float((unstructured == 0).mean())) and stats.nm is None
    nm = measure_sparsity([torch.from_numpy(two_four)])
    assert nm.sparsity == pytest.approx(0.5) and nm.nm == (2, 4)
    assert measure_sparsity([torch.ones(4)]) is None, "no 2-D float weights: nothing measured"


def test_flags_that_contradict_the_checkpoint_are_refused() -> None:
    spec = infer_compression(CheckpointFacts(gptq_config(3, 128)))
    check_flags(spec, method="gptq", bits=3, group_size=128)
    for flags, said in [({"bits": 4}, "--bits 4"), ({"method": "bnb-nf4"}, "--method bnb-nf4"),
                        ({"group_size": 64}, "--group-size 64"), ({"sparsity": 0.5}, "--sparsity 0.5")]:
        with pytest.raises(InvalidInput, match=f"{said} disagrees with the checkpoint, which is gptq-w3-g128"):
            check_flags(spec, **flags)


def test_older_gptq_folders_record_their_settings_beside_the_weights(tmp_path) -> None:
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "quantize_config.json").write_text(json.dumps({"bits": 2, "group_size": 64, "desc_act": False}))
    assert infer_compression(CheckpointFacts.from_folder(tmp_path)).canonical == "gptq-w2-g64"
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": "gptq"}))
    with pytest.raises(InvalidInput, match="must be a JSON object"):
        CheckpointFacts.from_folder(tmp_path)


def test_a_record_that_contradicts_the_config_is_refused() -> None:
    with pytest.raises(InvalidInput, match="inconsistent"):
        infer_compression(CheckpointFacts(gptq_config(3, 128), recorded="gptq-w4-g128"))


def test_targets_keep_the_exact_compression() -> None:
    from ctpreg.registry.compression import parse_compression
    from ctpreg.registry.matcher import Target

    for text in ("sparsegpt-n2m4", "gptq-w4-g128+wanda-s50", "bnb-nf4", "gptq-w3-g64"):
        assert Target.for_spec("m", parse_compression(text)).spec.canonical == text


def test_weights_are_measured_only_when_the_records_cannot_tell() -> None:
    calls = []

    def measure() -> SparsityStats:
        calls.append(1)
        return SparsityStats(0.5)

    for facts in (CheckpointFacts(gptq_config(4, 128)),
                  CheckpointFacts({"quant_method": "bitsandbytes", "load_in_8bit": True}),
                  CheckpointFacts(recorded="magnitude-s50")):
        infer_compression(facts, sparsity=measure)
    assert calls == [], "a GPTQ, bitsandbytes or recorded checkpoint needs no pass over its weights"
    pruned = CheckpointFacts(recipe_methods=("wanda",))
    assert infer_compression(pruned, sparsity=measure).canonical == "wanda-s50" and calls == [1]
