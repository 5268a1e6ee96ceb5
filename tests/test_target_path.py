"""Validation on the user's own compressed checkpoint (``resolve --target-path``), ``compress --save`` and load-time
``attach``, on a tiny random Llama: checkpoints written by GPTQModel, by llmcompressor and by ctpreg itself."""

import json
import math
import socket
import sqlite3
from pathlib import Path

import pytest
import torch

from ctpreg.cli.main import main
from ctpreg.registry import Client, Settings, attach
from ctpreg.registry.artifacts import PromptMetadata, write_artifact
from ctpreg.registry.compression import build_spec
from tiny import text_file, tiny_llama

CALIBRATION = torch.randint(3, 300, (8, 64), generator=torch.Generator().manual_seed(0))
COMMON = ["--seq-len", "32", "--max-windows", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def gptq_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A GPTQ checkpoint as GPTQModel itself writes it (4-bit, group 32), tokenizer included."""
    from ctpreg.trainer.compress.gptq import quantize_gptq

    out = tmp_path_factory.mktemp("gptqmodel") / "tiny-gptq-w4-g32"
    cwd, logs_before = Path.cwd(), Path("logs").exists()
    quantize_gptq(tiny_model_dir, build_spec("gptq", bits=4, group_size=32), CALIBRATION, out)
    assert Path.cwd() == cwd and Path("logs").exists() == logs_before, "GPTQModel's log must not land in the cwd"
    assert any((out.parent / "logs").glob("*.log"))
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"
    return out


@pytest.fixture
def published(tmp_path: Path, cli_env, capsys) -> dict:
    """A prompt for tiny-llama published through the CLI (fixed embeddings: mechanics, not quality)."""
    loaded = tiny_llama()
    rows = loaded.model.get_input_embeddings().weight[torch.tensor([5, 17, 42])].detach().numpy()
    meta = PromptMetadata(
        model="tiny-llama", model_fingerprint=loaded.fingerprint, compression=build_spec("gptq", bits=3, group_size=32),
        dataset="corpus", num_virtual_tokens=3, hidden_size=loaded.hidden_size, training={"steps": 0},
        metrics={"ppl_full": 300.0, "ppl_compressed": 330.0, "ppl_prompted": 320.0},
    )
    path = tmp_path / "p.safetensors"
    write_artifact(path, rows, meta)
    assert main(["publish", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    return {**out, "ref": f"{out['name']}:{out['version']}"}


def run_json(capsys, *args: str):
    code = main([*args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return json.loads(out)


def evidence(home: Path) -> list[tuple]:
    with sqlite3.connect(home / "registry.db") as conn:
        return conn.execute("SELECT target_key, eval_key, ppl_without FROM transfer_result ORDER BY id").fetchall()


def direct_perplexity(model, windows: torch.Tensor) -> float:
    """Reference: the model's own loss with labels (tokens 2..L of each window), no ctpreg code in the path."""
    total = 0.0
    with torch.no_grad():
        for window in windows:
            ids = window.unsqueeze(0)
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
    return math.exp(total / (windows.shape[0] * (windows.shape[1] - 1)))


def test_gptqmodel_checkpoint_is_validated_as_it_is(gptq_dir, published, tmp_path, cli_env, capsys) -> None:
    from ctpreg.trainer.compress.gptq import load_packed
    from ctpreg.trainer.data import all_windows, load_corpus

    home = Path(cli_env["CTPREG_HOME"])
    corpus = text_file(tmp_path)
    assert main(["resolve", "--target-path", str(gptq_dir), "--validate", "--validation-data", "news",
                 "--min-gain", "-1", *COMMON, "--json"]) == 0
    out, err = capsys.readouterr()
    news = json.loads(out)
    assert f"{gptq_dir}: tiny-llama gptq-w4-g32" in err, "model and compression are read from the checkpoint"
    assert news[0]["tier"] == 1 and news[0]["ref"] == published["ref"]
    assert news[0]["target_key"].startswith("checkpoint:") and news[0]["eval_data"]["corpus"] == "news"
    first = run_json(capsys, "resolve", "--target-path", str(gptq_dir), "--validate", "--text-file", str(corpus),
                     "--min-gain", "-1", *COMMON)
    rows = evidence(home)
    assert len(rows) == 2, "evidence measured on news is not reused for --text-file"
    assert rows[0][0] == rows[1][0] and rows[0][1] != rows[1][1]
    from transformers import AutoTokenizer

    from ctpreg.trainer.compress.gptq import dequantize_dense

    windows = all_windows(AutoTokenizer.from_pretrained(gptq_dir), load_corpus(str(corpus)), seq_len=32, limit=4)
    assert first[0]["eval_data"]["windows"] == windows.shape[0]
    # The checkpoint's quantized values, evaluated by the model's own loss: equal to what resolve measured ...
    assert first[0]["ppl_without"] == pytest.approx(
        direct_perplexity(dequantize_dense(load_packed(gptq_dir)), windows), rel=1e-5
    )
    # ... and to GPTQModel's packed bf16 kernel up to bf16 rounding.
    assert first[0]["ppl_without"] == pytest.approx(direct_perplexity(load_packed(gptq_dir), windows), rel=2e-2)
    again = run_json(capsys, "resolve", "--target-path", str(gptq_dir), "--validate", "--text-file", str(corpus),
                     "--min-gain", "-1", *COMMON)
    assert len(evidence(home)) == 2 and again[0]["ppl_with"] == first[0]["ppl_with"], (
        "same target, same windows: reused"
    )
    plain = run_json(
        capsys, "resolve", "--model", "tiny-llama", "--method", "gptq", "--bits", "4", "--group-size", "32"
    )
    assert plain[0]["tier"] != 1, "a measurement on one user's checkpoint is not evidence for every gptq-w4-g32 model"


def test_flags_against_the_checkpoint_are_refused_writing_nothing(gptq_dir, tmp_path, cli_env, capsys) -> None:
    home = Path(cli_env["CTPREG_HOME"])
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    cases = [
        (["--target-path", str(loop)], "Symlink loop"),
        (["--target-path", str(gptq_dir), "--bits", "3"],
         "--bits 3 disagrees with the checkpoint, which is gptq-w4-g32"),
        (["--target-path", str(gptq_dir), "--method", "bnb-nf4"], "--method bnb-nf4 disagrees"),
        (["--target-path", str(gptq_dir), "--group-size", "128"], "--group-size 128 disagrees"),
        (["--target-path", str(tmp_path / "missing")], "is not a folder holding a checkpoint"),
        (["--target-path", str(text_file(tmp_path))], "is not a folder holding a checkpoint"),
        (["--target-path", str(tmp_path)], "has no config.json"),
        (["--model", "tiny-llama", "--bits", "3", "--text-file", "x.txt"], "add --validate"),
        (["--bits", "3"], "give --model, or --target-path"),
    ]
    for args, message in cases:
        assert main(["resolve", *args, "--device", "cpu"]) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (home / "registry.db").exists(), "a refused request writes nothing"


def test_compress_save_writes_checkpoints_that_resolve_reads(
    tiny_model_dir, published, tmp_path, cli_env, capsys
) -> None:
    from transformers import AutoModelForCausalLM

    corpus = str(text_file(tmp_path))
    base = ["compress", "--model", "tiny-llama", "--model-path", str(tiny_model_dir), "--device", "cpu",
            "--calibration", corpus, "--calibration-windows", "4"]
    pruned_dir, gptq_dir = tmp_path / "pruned", tmp_path / "gptq"
    report = run_json(capsys, *base, "--method", "magnitude", "--sparsity", "0.5", "--save", str(pruned_dir))
    assert report["saved"] == str(pruned_dir)
    assert json.loads((pruned_dir / "ctpreg.json").read_text())["compression"] == "magnitude-s50"
    plain = AutoModelForCausalLM.from_pretrained(pruned_dir)  # loads without ctpreg
    assert float((plain.model.layers[0].mlp.up_proj.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    run_json(capsys, *base, "--method", "gptq", "--bits", "4", "--group-size", "32", "--save", str(gptq_dir))
    assert json.loads((gptq_dir / "config.json").read_text())["quantization_config"]["bits"] == 4
    for folder, expected in [(pruned_dir, "magnitude-s50"), (gptq_dir, "gptq-w4-g32")]:
        main(["resolve", "--target-path", str(folder), "--device", "cpu"])
        assert f"tiny-llama {expected}" in capsys.readouterr().err
    assert main([*base, "--method", "gptq", "--bits", "4", "--save", str(gptq_dir)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert main([*base, "--method", "bnb-nf4", "--save", str(tmp_path / "bnb")]) == 2
    assert "bitsandbytes quantizes at load time" in capsys.readouterr().err
    assert main([*base, "--method", "magnitude", "--sparsity", "0.5", "--save", str(tmp_path / "no" / "such")]) == 2
    assert "does not exist" in capsys.readouterr().err
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert main([*base, "--method", "magnitude", "--sparsity", "0.5", "--save", str(loop / "x")]) == 2
    assert "Symlink loop" in capsys.readouterr().err
    assert not (tmp_path / "bnb").exists() and not list(tmp_path.glob(".*.partial"))


def test_llmcompressor_sparse_checkpoint_is_read_from_its_recipe(
    tiny_model_dir, published, tmp_path, cli_env, capsys
) -> None:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    dataset = Dataset.from_dict({"input_ids": CALIBRATION.tolist(), "attention_mask": [[1] * 64] * 8})
    out = tmp_path / "wanda"
    oneshot(model=model, tokenizer=tokenizer, dataset=dataset, output_dir=str(out), num_calibration_samples=8,
            max_seq_length=64, recipe=WandaPruningModifier(sparsity=0.5, mask_structure="0:0", targets=["Linear"],
                                                           ignore=["re:.*lm_head"]))
    assert (out / "recipe.yaml").is_file()
    capsys.readouterr()  # llmcompressor prints its progress to stdout
    assert main(["resolve", "--target-path", str(out), "--validate", "--text-file", str(text_file(tmp_path)),
                 "--min-gain", "-1", *COMMON, "--json"]) == 0
    out_text, err = capsys.readouterr()
    report = json.loads(out_text)
    assert "tiny-llama wanda-s50" in err
    assert report[0]["tier"] == 1 and report[0]["target_key"].startswith("checkpoint:")
    assert main(["resolve", "--target-path", str(out), "--method", "sparsegpt", "--device", "cpu"]) == 2
    assert "disagrees with the checkpoint's recipe" in capsys.readouterr().err


def test_attach_reads_the_model_and_matches_apply(gptq_dir, published, tmp_path, cli_env, monkeypatch, capsys) -> None:
    from transformers import AutoTokenizer

    from ctpreg.trainer.compress.gptq import load_packed

    corpus = text_file(tmp_path)
    run_json(capsys, "resolve", "--target-path", str(gptq_dir), "--validate", "--text-file", str(corpus),
             "--min-gain", "-1", *COMMON)
    model, tokenizer = load_packed(gptq_dir), AutoTokenizer.from_pretrained(gptq_dir)
    client = Client.from_env()
    prompted = attach(model, tokenizer, client=client)
    resolved = prompted.resolved
    assert resolved.record.ref == published["ref"]
    assert resolved.tier == 1 and "measured on this target" in resolved.explanation, "the CLI's evidence is reused"
    reference = client.fetch(published["ref"]).apply(model, tokenizer)
    ids = tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(prompted(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=0)
    assert torch.equal(prompted.generate(ids, max_new_tokens=4, do_sample=False),
                       reference.generate(ids, max_new_tokens=4, do_sample=False))

    def no_network(*args, **kwargs):
        raise AssertionError("offline attach opened a socket")

    monkeypatch.setenv("CTPREG_OFFLINE", "1")
    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    offline = attach(model, tokenizer, client=Client(Settings.from_env()))
    assert offline.resolved.record.sha256 == resolved.record.sha256
    assert torch.equal(offline.prompt, prompted.prompt)


def test_attach_validates_on_the_in_memory_model(published, tmp_path, cli_env) -> None:
    loaded = tiny_llama()  # an in-memory model with no files: identified by its tensors
    texts = [text_file(tmp_path).read_text()]
    prompted = attach(loaded.model, loaded.tokenizer, validate=True, texts=texts, seq_len=32, max_windows=4,
                      min_gain=-1.0)
    measured = prompted.resolved
    assert measured.tier == 1 and "texts/given, 4x32 tokens" in measured.explanation
    [(target_key, eval_key, ppl_without)] = evidence(Path(cli_env["CTPREG_HOME"]))
    assert target_key.startswith("memory:") and eval_key.startswith("eval:")
    from ctpreg.registry.prompted import cut_windows, perplexity_sums

    nll, tokens = perplexity_sums(loaded.model, cut_windows(loaded.tokenizer, texts, 32, 4, "texts"), None)
    assert ppl_without == pytest.approx(math.exp(nll / tokens))
    assert ppl_without == pytest.approx(
        direct_perplexity(loaded.model, cut_windows(loaded.tokenizer, texts, 32, 4, "t"))
    )
    from ctpreg.registry.errors import InvalidInput

    with pytest.raises(InvalidInput, match="needs texts"):
        attach(loaded.model, loaded.tokenizer, validate=True)


@pytest.mark.parametrize(
    ("method", "expected"), [("bnb-nf4", "bnb-nf4"), ("bnb-int8", "bnb-int8"), ("magnitude", None)]
)
def test_in_memory_models_are_described_from_their_layers(method: str, expected: str | None, tmp_path: Path) -> None:
    from ctpreg.registry import describe_loaded
    from ctpreg.registry.errors import InvalidInput
    from ctpreg.trainer.compress import CompressionCache, compress

    loaded = tiny_llama()
    spec = build_spec(method, sparsity=0.5) if method == "magnitude" else build_spec(method)
    model = compress(loaded, spec, calibration=None, cache=CompressionCache(tmp_path)).model
    if expected is None:  # pruned in memory: the zeros are measured, the pruner must be named
        with pytest.raises(InvalidInput, match="pass --method"):
            describe_loaded(model, loaded.tokenizer)
        described = describe_loaded(model, loaded.tokenizer, method_hint="magnitude")
        assert described.spec.canonical == "magnitude-s50"
    else:
        described = describe_loaded(model, loaded.tokenizer)
        assert described.spec.canonical == expected
    assert described.fingerprint == loaded.fingerprint and described.identity.startswith("memory:")


def test_public_names_stay_functions_after_their_modules_load() -> None:
    """An export named like its module would be shadowed by the submodule once anything imported it."""
    import importlib
    import types

    import ctpreg.registry as package

    for name, module in package._EXPORTS.items():
        importlib.import_module(f"ctpreg.registry.{module}")
        assert not isinstance(getattr(package, name), types.ModuleType), name


def test_gptq_folder_with_only_config_json_as_transformers_saves_it(
    gptq_dir, published, tmp_path, cli_env, capsys
) -> None:
    """transformers + optimum keep the GPTQ settings in config.json's quantization_config, with no
    quantize_config.json."""
    import shutil

    folder = tmp_path / "hf-gptq"
    shutil.copytree(gptq_dir, folder)
    (folder / "quantize_config.json").unlink()
    assert main(["resolve", "--target-path", str(folder), "--device", "cpu", "--json"]) == 0
    out, err = capsys.readouterr()
    assert f"{folder}: tiny-llama gptq-w4-g32" in err and json.loads(out)[0]["ref"] == published["ref"]


def test_a_model_changed_after_loading_is_not_its_folder(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ctpreg.registry import describe_loaded

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    as_saved = describe_loaded(model, tokenizer)
    assert as_saved.identity.startswith("checkpoint:") and as_saved.source == str(tiny_model_dir)
    with torch.no_grad():  # e.g. an adapter merged into one projection
        model.model.layers[1].self_attn.q_proj.weight[0, 0] += 1.0
    changed = describe_loaded(model, tokenizer)
    assert changed.identity.startswith("memory:") and changed.spec.canonical == as_saved.spec.canonical
