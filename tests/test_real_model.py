"""The packaged SmolLM2-135M end to end (slow: minutes on 2 cores; run in CI, skip locally with -m "not slow").

Numbers here are checked for sanity (finite, ordered as compression predicts) and for the one claim training must
keep: with a fixed seed, the prompted compressed model beats the unprompted one on the test split, which chose
nothing. The measured quality results come from bench/recovery.py and ctpreg demo with their full budgets.
"""

import json
import math
from pathlib import Path

import pytest

from ctpreg.cli.main import main

pytestmark = pytest.mark.slow


@pytest.fixture
def env(real_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in ("CTPREG_DB_URL", "CTPREG_STORE_URL", "CTPREG_CACHE_DIR", "CTPREG_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CTPREG_HOME", str(real_home))
    return real_home


def run_json(capsys, *args: str) -> dict:
    code = main([*args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return json.loads(out)


def test_packaged_gguf_is_converted_once_and_loads_the_same(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first load dequantizes the GGUF file and keeps it under $CTPREG_HOME/models; the next reads that folder
    without parsing GGUF at all and gives the same tokens, logits and fingerprint."""
    import shutil

    import gguf
    import torch

    from ctpreg.trainer.pipeline import load_base

    shutil.rmtree(env / "models", ignore_errors=True)
    first = load_base("smollm2-135m", device="cpu", home=env)
    (folder,) = (env / "models" / "smollm2-135m").iterdir()

    def refuse(*args, **kwargs):
        raise AssertionError("the GGUF file was parsed again")

    monkeypatch.setattr(gguf.GGUFReader, "__init__", refuse)
    second = load_base("smollm2-135m", device="cpu", home=env)
    assert second.source == first.source and second.fingerprint == first.fingerprint
    text = "A Wikipedia article: <|im_start|>user\nhé 🤖\t  x<|im_end|>"
    ids = first.tokenizer(text, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, second.tokenizer(text, return_tensors="pt")["input_ids"])
    with torch.no_grad():
        assert torch.equal(first.model(ids).logits, second.model(ids).logits), f"{folder} holds other weights"


def test_gptq_4bit_prompt_beats_the_bare_model_on_the_test_split(env: Path, tmp_path: Path, capsys) -> None:
    report = run_json(
        capsys, "train", "--model", "smollm2-135m", "--method", "gptq", "--bits", "4", "--dataset", "wiki",
        "--steps", "12", "--eval-every", "6", "--eval-windows", "8", "--calibration-windows", "8", "--seed", "0",
        "--device", "cpu", "-o", str(tmp_path / "p.safetensors"), "--publish",
    )
    for key in ("ppl_full", "ppl_compressed", "ppl_prompted"):
        assert math.isfinite(report[key]) and report[key] > 1, key
    assert report["ppl_compressed"] > report["ppl_full"], "4-bit GPTQ must cost some perplexity"
    assert report["eval_data"]["split"] == "test" and report["eval_data"]["windows"] == 8
    assert report["best_step"] > 0, "training moved the prompt away from its initialisation on select"
    assert report["ppl_prompted"] < report["ppl_compressed"], "the prompt must help on windows that chose nothing"
    assert report["published"] == "smollm2-135m/gptq-w4-g128/wiki:1"
    models = run_json(capsys, "models", "list")
    assert models[0]["architecture"] == "LlamaForCausalLM" and models[0]["hidden_size"] == 576
    assert models[0]["vocab_size"] == 49152


def test_demo_with_a_small_budget(env: Path, capsys) -> None:
    report = run_json(
        capsys, "demo", "--steps", "5", "--eval-windows", "4", "--calibration-windows", "8",
        "--targets", "gptq-w4-g128,sparsegpt-s50", "--device", "cpu",
    )
    rows = {row["target"]: row for row in report["rows"]}
    assert set(rows) == {"gptq-w3-g128", "gptq-w4-g128", "sparsegpt-s50"}
    for row in rows.values():
        assert all(math.isfinite(row[k]) for k in ("ppl_full", "ppl_compressed", "ppl_prompted"))
    assert rows["gptq-w3-g128"]["ppl_compressed"] > rows["gptq-w4-g128"]["ppl_compressed"]
    assert report["eval_data"]["split"] == "test" and report["select_data"]["split"] == "select"
    assert report["eval_data"]["token_digest"] != report["select_data"]["token_digest"]
    points = run_json(capsys, "report", "--model", "smollm2-135m")
    on_test = {p["target"]: p for p in points if p["eval_key"] == report["eval_data"]["key"]}
    assert set(on_test) == set(rows), "the trained target and every validated one, on the table's windows"
    for target, point in on_test.items():  # the demo's table and the report show the same measurements
        assert point["ppl_full"] == pytest.approx(rows[target]["ppl_full"]), "the tester recorded the full model"
        assert point["ppl_compressed"] == pytest.approx(rows[target]["ppl_compressed"])
        assert point["ppl_prompted"] == pytest.approx(rows[target]["ppl_prompted"])
    multi = "smollm2-135m/gptq-w3-g128/wiki:1"  # trained on all three targets, named after the first
    registered = {p["ref"] for p in run_json(capsys, "list")}
    for target in ("gptq-w3-g128", "gptq-w4-g128", "sparsegpt-s50"):
        # The validator measured the candidates on select and served the best: the 5-step multi-target prompt, or
        # the first test's 12-step 4-bit prompt where that one measured better.
        row = rows[target]
        assert row["note"].startswith("trained here") and row["served"] in registered | {None}, target
        assert row["why"].startswith("measured on this target"), (target, row["why"])
    for target, point in on_test.items():  # the served multi-target prompt's own test figures come from its artifact
        reused = target in ("gptq-w3-g128", "gptq-w4-g128", "sparsegpt-s50") and rows[target]["served"] == multi
        assert point["source"] == ("artifact" if reused else "evidence"), (target, point["source"])
    # the first test's 4-bit artifact adds its own 8 test windows; the demo adds its test and select windows
    assert {report["eval_data"]["key"], report["select_data"]["key"]} <= {p["eval_key"] for p in points}


def test_saved_gptq_checkpoint_validated_as_it_is_and_attached(env: Path, tmp_path: Path, capsys) -> None:
    """The 4-bit model of the first test, saved as GPTQModel's checkpoint, measured through --target-path; the
    figure equals the checkpoint's own loss on the same windows, and attach serves the measured prompt."""
    import torch
    from transformers import AutoTokenizer

    from ctpreg.registry import Client, attach
    from ctpreg.trainer.compress.gptq import dequantize_dense, load_packed
    from ctpreg.trainer.data import load_corpus, split_windows

    folder = tmp_path / "smollm2-gptq-w4"
    saved = run_json(capsys, "compress", "--model", "smollm2-135m", "--method", "gptq", "--bits", "4",
                     "--calibration-windows", "8", "--device", "cpu", "--save", str(folder))
    assert saved["from_cache"] and saved["saved"] == str(folder)
    measured = run_json(capsys, "resolve", "--target-path", str(folder), "--validate", "--validation-data", "news",
                        "--max-windows", "4", "--min-gain", "-1", "--device", "cpu")
    best = measured[0]
    assert best["tier"] == 1 and best["target_key"].startswith("checkpoint:")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    windows = split_windows(tokenizer, load_corpus("news"), "select", seq_len=256, limit=4)
    model = dequantize_dense(load_packed(folder))
    with torch.no_grad():
        nll = sum(float(model(input_ids=w[None], labels=w[None]).loss) * 255 for w in windows)
    assert best["ppl_without"] == pytest.approx(math.exp(nll / (255 * windows.shape[0])), rel=1e-5)
    prompted = attach(load_packed(folder), tokenizer, client=Client.from_env())
    assert prompted.resolved.record.ref == best["ref"] and prompted.resolved.tier == 1
