"""Load-time apply (forward and generate) and PEFT interop in both directions, on a tiny random Llama."""

import json

import numpy as np
import pytest
import torch

from ctpreg.cli.main import main
from ctpreg.registry import Client, Settings
from ctpreg.registry.artifacts import PromptMetadata, write_artifact
from ctpreg.registry.compression import parse_compression
from ctpreg.registry.errors import Conflict
from helpers import FP_B
from tiny import tiny_llama


def manual_inputs(model, ids: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference, written out: prompt rows then token embeddings; the mask covers both."""
    embeds = torch.cat([prompt.expand(ids.shape[0], -1, -1), model.get_input_embeddings()(ids)], dim=1)
    return embeds, torch.ones(embeds.shape[:2], dtype=torch.long)


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=3)


@pytest.fixture
def published(tiny, tmp_path, cli_env):
    """A prompt for the tiny model, published on the embedded defaults; returns (client, embeddings)."""
    embeddings = np.random.default_rng(0).standard_normal((5, tiny.hidden_size)).astype(np.float32) * 0.1
    meta = PromptMetadata(
        model="tiny-llama", model_fingerprint=tiny.fingerprint, compression=parse_compression("gptq-w3-g128"),
        dataset="wiki", num_virtual_tokens=5, hidden_size=tiny.hidden_size,
        metrics={"ppl_full": 10.0, "ppl_compressed": 20.0, "ppl_prompted": 15.0},
    )
    write_artifact(tmp_path / "p.safetensors", embeddings, meta)
    assert main(["publish", str(tmp_path / "p.safetensors")]) == 0
    return Client(Settings.from_env()), torch.from_numpy(embeddings)


def test_apply_forward_prepends_prompt_and_masks_labels(tiny, published) -> None:
    client, embeddings = published
    resolved = client.resolve("tiny-llama", method="gptq", bits=3)
    wrapped = resolved.apply(tiny.model, tiny.tokenizer)
    ids = torch.randint(3, tiny.vocab_size, (2, 9))
    out = wrapped(input_ids=ids, labels=ids)
    embeds, mask = manual_inputs(tiny.model, ids, embeddings)
    manual_logits = tiny.model(inputs_embeds=embeds, attention_mask=mask).logits
    torch.testing.assert_close(out.logits, manual_logits)
    scoring = manual_logits[:, 5:-1]  # tokens 2..L, each from the position before it; prompt and token 1 unscored
    expected_loss = torch.nn.functional.cross_entropy(scoring.reshape(-1, scoring.shape[-1]), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected_loss)


def test_generate_with_the_wrapper_equals_manual_inputs_embeds(tiny, published) -> None:
    client, embeddings = published
    wrapped = client.resolve("tiny-llama", method="gptq", bits=3).apply(tiny.model, tiny.tokenizer)
    ids = tiny.tokenizer("The quick brown", return_tensors="pt")["input_ids"]
    ours = wrapped.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    embeds, mask = manual_inputs(tiny.model, ids, embeddings)
    manual = tiny.model.generate(
        inputs_embeds=embeds, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0
    )
    assert torch.equal(ours, torch.cat([ids, manual], dim=1))


def test_apply_refuses_another_embedding_space(published) -> None:
    client, _ = published
    resolved = client.resolve("tiny-llama", method="gptq", bits=3)
    other = tiny_llama(seed=3, vocab=400)  # same hidden size, different vocabulary size
    with pytest.raises(Conflict, match="fingerprint"):
        resolved.apply(other.model, other.tokenizer)
    wider = tiny_llama(hidden=32)
    with pytest.raises(Conflict, match="hidden size"):
        resolved.apply(wider.model)


def test_peft_loads_our_export_with_the_same_logits(tiny, published, tmp_path, capsys) -> None:
    from peft import PeftModel

    client, _ = published
    folder = tmp_path / "adapter"
    assert main(["export", "tiny-llama/gptq-w3-g128/wiki", "--peft", str(folder)]) == 0
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"], config["num_virtual_tokens"]) == ("PROMPT_TUNING", "CAUSAL_LM", 5)
    peft_model = PeftModel.from_pretrained(tiny_llama(seed=3).model, str(folder))
    ids = torch.randint(3, tiny.vocab_size, (2, 7))
    ours = client.resolve("tiny-llama", method="gptq", bits=3).apply(tiny.model, tiny.tokenizer)(input_ids=ids).logits
    theirs = peft_model(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_a_prompt_trained_by_peft_imports(tiny, published, tmp_path, capsys) -> None:
    from peft import PromptTuningConfig, get_peft_model

    peft_model = get_peft_model(
        tiny_llama(seed=3).model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6)
    )
    ids = torch.randint(3, tiny.vocab_size, (2, 12))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        peft_model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    folder = tmp_path / "peft-trained"
    peft_model.save_pretrained(str(folder))
    code = main([
        "import", "--peft", str(folder), "--model", "tiny-llama", "--method", "bnb-nf4", "--dataset", "news", "--json"
    ])
    out, err = capsys.readouterr()
    assert code == 0, err
    imported = json.loads(out)
    assert imported["name"] == "tiny-llama/bnb-nf4/news"
    prompt = Client(Settings.from_env()).fetch(f"{imported['name']}:{imported['version']}")
    trained = peft_model.get_prompt_embedding_to_save("default").detach()
    np.testing.assert_allclose(prompt.numpy(), trained.numpy(), rtol=0, atol=0)
    assert prompt.metadata.training["source"] == "peft"


def test_import_refuses_pickle_adapters_and_unknown_models(tmp_path, capsys, cli_env) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "token_dim": 8})
    )
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    assert main(["models", "add", "m", "--fingerprint", FP_B, "--hidden-size", "8", "--vocab-size", "10"]) == 0
    code = main(["import", "--peft", str(folder), "--model", "m", "--method", "none", "--dataset", "d"])
    assert code == 2 and "never loaded" in capsys.readouterr().err
    code = main(["import", "--peft", str(folder), "--model", "unknown", "--method", "none", "--dataset", "d"])
    assert code == 5 and "not registered" in capsys.readouterr().err
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    code = main(["import", "--peft", str(folder), "--model", "m", "--method", "none", "--dataset", "d"])
    assert code == 2 and "only PROMPT_TUNING" in capsys.readouterr().err
