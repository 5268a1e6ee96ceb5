"""Trainer commands end to end on a tiny random Llama saved as a local model folder (the path real users take)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ctpreg.cli.main import main
from ctpreg.registry.artifacts import read_artifact
from tiny import text_file, tiny_llama


@pytest.fixture
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


TRAIN = ["--seq-len", "32", "--steps", "6", "--eval-every", "3", "--eval-windows", "4", "--num-tokens", "3",
         "--calibration-windows", "4", "--device", "cpu"]


def test_train_publish_then_eval_with_the_published_prompt(model_dir, tmp_path, capsys, cli_env) -> None:
    corpus = text_file(tmp_path)
    out = tmp_path / "p.safetensors"
    code, stdout, err = run(
        capsys, "train", "--model", "tiny-llama", "--model-path", str(model_dir), "--method", "gptq", "--bits", "4",
        "--group-size", "32", "--dataset", str(corpus), "--calibration", str(corpus), "-o", str(out), "--publish",
        "--json", *TRAIN,
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert all(report[k] > 1 for k in ("ppl_full", "ppl_compressed", "ppl_prompted"))
    assert report["published"] == "tiny-llama/gptq-w4-g32/corpus:1"
    artifact, _ = read_artifact(out)
    meta = artifact.metadata
    assert (meta.model, meta.compression.canonical, meta.dataset, meta.num_virtual_tokens) == (
        "tiny-llama", "gptq-w4-g32", "corpus", 3
    )
    assert meta.metrics["ppl_prompted"] == report["ppl_prompted"]
    assert meta.training["steps"] == 6 and len(meta.training["data_hash"]) == 64
    # The artifact's figures are reproducible from its provenance: the same test windows, measured again.
    data = meta.metrics["eval_data"]
    assert data["split"] == "test" and meta.training["select_data"]["split"] == "select"
    assert data["token_digest"] != meta.training["select_data"]["token_digest"]
    code, stdout, err = run(
        capsys, "eval", "--model", "tiny-llama", "--model-path", str(model_dir), "--method", "gptq", "--bits", "4",
        "--group-size", "32", "--calibration", str(corpus), "--calibration-windows", "4", "--prompt", str(out),
        "--dataset", str(corpus), "--seq-len", str(data["seq_len"]), "--max-windows", str(data["windows"]),
        "--device", "cpu", "--json",
    )
    assert code == 0, err
    again = json.loads(stdout)
    assert again["eval_data"]["key"] == data["key"], "the same windows, named the same"
    for key in ("ppl_full", "ppl_compressed", "ppl_prompted"):
        assert again[key] == pytest.approx(meta.metrics[key], rel=1e-6), key
    code, stdout, err = run(capsys, "models", "list", "--json")
    model = json.loads(stdout)[0]
    assert model["architecture"] == "LlamaForCausalLM" and model["vocab_size"] == tiny_llama().vocab_size

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(
        json.dumps({"question": f"Document {i}.", "choices": ["The quick", "zebra"], "answer": 0}) for i in range(3)
    ))
    code, stdout, err = run(
        capsys, "eval", "--model", "tiny-llama", "--model-path", str(model_dir), "--method", "gptq", "--bits", "4",
        "--group-size", "32", "--calibration", str(corpus), "--calibration-windows", "4", "--prompt",
        "tiny-llama/gptq-w4-g32/corpus", "--text-file", str(corpus), "--seq-len", "32", "--max-windows", "4",
        "--tasks", str(tasks), "--device", "cpu", "--json",
    )
    assert code == 0, err
    evaluated = json.loads(stdout)
    assert evaluated["tokens"] == 4 * 31
    assert {"ppl_full", "ppl_compressed", "ppl_prompted", "accuracy_full", "accuracy_prompted"} <= set(evaluated)
    for key in ("accuracy_full", "accuracy_prompted"):  # 3 questions: a fraction k/3, measured, not a default
        assert evaluated[key] * 3 == pytest.approx(round(evaluated[key] * 3)), evaluated[key]


def test_one_prompt_trained_across_targets_resolves_as_exact_for_each(model_dir, tmp_path, capsys, cli_env) -> None:
    corpus = text_file(tmp_path)
    out = tmp_path / "multi.safetensors"
    code, stdout, err = run(
        capsys, "train", "--model", "tiny-llama", "--model-path", str(model_dir), "--targets",
        "gptq-w4-g32,magnitude-s50", "--dataset", str(corpus), "--calibration", str(corpus), "-o", str(out),
        "--publish", "--json", *TRAIN,
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert list(report["targets"]) == ["gptq-w4-g32", "magnitude-s50"]
    assert report["eval_data"]["split"] == "test"
    meta = read_artifact(out)[0].metadata
    assert [s.canonical for s in meta.trained_on] == ["gptq-w4-g32", "magnitude-s50"]
    for name, figures in meta.metrics["targets"].items():
        assert figures["ppl_full"] == report["ppl_full"] and figures["ppl_compressed"] > 1, name
    assert meta.metrics["targets"]["gptq-w4-g32"]["ppl_compressed"] != meta.metrics["targets"]["magnitude-s50"][
        "ppl_compressed"], "each target measured on its own compressed model"
    for args in (["--method", "gptq", "--bits", "4", "--group-size", "32"],
                 ["--method", "magnitude", "--sparsity", "0.5"]):
        code, stdout, err = run(capsys, "resolve", "--model", "tiny-llama", *args, "--json")
        assert code == 0, err
        assert json.loads(stdout)[0]["ref"] == report["published"] and json.loads(stdout)[0]["tier"] == 2
    code, _, err = run(capsys, "train", "--model", "tiny-llama", "--model-path", str(model_dir), "--targets",
                       "gptq-w4-g32", "--method", "gptq", "-o", str(tmp_path / "x.safetensors"))
    assert code == 2 and "drop --method" in err
    code, _, err = run(capsys, "train", "--model", "tiny-llama", "-o", str(tmp_path / "x.safetensors"))
    assert code == 2 and "give --method" in err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "awq"], "unknown compression method 'awq'"),
        (["--method", "gptq", "--bits", "5"], "gptq supports bits [2, 3, 4, 8], got 5"),
        (["--method", "sparsegpt", "--sparsity", "1.2"], "sparsity must lie strictly between 0 and 1"),
        (["--method", "magnitude", "--sparsity", "0.5", "--dataset", "/nonexistent/x.txt"], "does not exist"),
        (["--method", "magnitude", "--sparsity", "0.5", "--dataset", "SHORT"], "fewer than one window"),
        (["--method", "magnitude", "--sparsity", "0.5", "--dataset", "FEW"], "test need at least 10"),
        (["--method", "none", "--model-path", "/nonexistent/model.gguf"], "does not exist"),
    ],
)
def test_bad_trainer_input_is_a_clear_error(model_dir, tmp_path, capsys, cli_env, args, message) -> None:
    short = tmp_path / "short.txt"
    short.write_text("\n\n".join(f"too short {i}" for i in range(10)))
    few = tmp_path / "few.txt"
    few.write_text("one document")
    args = [{"SHORT": str(short), "FEW": str(few)}.get(a, a) for a in args]
    base = ["train", "--model", "tiny-llama", "--model-path", str(model_dir), "-o", str(tmp_path / "p.safetensors"),
            "--seq-len", "256", "--device", "cpu"]
    code, stdout, err = run(capsys, *base, *args)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, err
    assert not (tmp_path / "p.safetensors").exists()


def test_eval_refuses_a_prompt_from_another_embedding_space(model_dir, tmp_path, capsys, cli_env) -> None:
    from helpers import write_artifact_file

    foreign = write_artifact_file(tmp_path / "foreign.safetensors", seed=1, hidden=64)
    code, _, err = run(
        capsys, "eval", "--model", "tiny-llama", "--model-path", str(model_dir), "--method", "none",
        "--prompt", str(foreign), "--text-file", str(text_file(tmp_path)), "--seq-len", "32", "--device", "cpu",
    )
    assert code == 6 and "cannot apply" in err


WORKER = """
import sys, torch
sys.path.insert(0, {tests!r})
from ctpreg.trainer.distributed import init_from_env, rank_and_world
from ctpreg.trainer.data import load_corpus, make_windows
from ctpreg.trainer.train import TrainConfig, train_prompt
from tiny import tiny_llama
init_from_env()
rank, world = rank_and_world()
assert world == 2
loaded = tiny_llama()
windows = make_windows(loaded.tokenizer, load_corpus({corpus!r}), seq_len=32)
result = train_prompt(loaded.model, windows, TrainConfig(num_tokens=3, steps=4, eval_every=2, autocast_bf16=False, \
lr=0.05))
from safetensors.torch import save_file
save_file({{"prompt": result.prompt.contiguous()}}, {out!r} + f".{{rank}}")
"""


def test_two_gloo_ranks_end_with_the_identical_prompt(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    script = tmp_path / "worker.py"
    out = str(tmp_path / "prompt")
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), corpus=str(text_file(tmp_path)), out=out))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = load_file(out + ".0")["prompt"], load_file(out + ".1")["prompt"]
    assert torch.equal(first, second)
    assert not torch.equal(first, tiny_llama().model.get_input_embeddings().weight[:3])
