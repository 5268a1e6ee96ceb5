"""Validated resolve through the CLI and the demo pipeline, on a tiny random Llama in a local folder."""

import json
import sqlite3
from pathlib import Path

import pytest

from ctpreg.cli.main import main
from tiny import text_file


@pytest.fixture
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


def run_json(capsys, *args: str):
    code = main([*args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def evidence_rows(home: Path) -> int:
    with sqlite3.connect(home / "registry.db") as conn:
        return conn.execute("SELECT count(*) FROM transfer_result").fetchone()[0]


def test_validate_records_evidence_and_the_second_resolve_reuses_it(model_dir, tmp_path, capsys, cli_env) -> None:
    home = Path(cli_env["CTPREG_HOME"])
    corpus = str(text_file(tmp_path))
    common = ["--model-path", str(model_dir), "--calibration", corpus, "--calibration-windows", "4", "--device", "cpu"]
    run_json(capsys, "train", "--model", "tiny-llama", "--method", "gptq", "--bits", "4", "--group-size", "32",
             "--dataset", corpus, "-o", str(tmp_path / "p.safetensors"), "--publish", "--seq-len", "32", "--steps", "4",
             "--eval-every", "2", "--eval-windows", "4", "--num-tokens", "3", *common)
    resolve = ["resolve", "--model", "tiny-llama", "--method", "gptq", "--bits", "2", "--group-size", "32",
               "--validate", "--text-file", corpus, "--seq-len", "32", "--max-windows", "4", "--min-gain", "-1",
               *common]
    first = run_json(capsys, *resolve)
    assert first[0]["tier"] == 1 and first[0]["ppl_without"] > 1 and first[0]["ppl_with"] > 1
    assert evidence_rows(home) == 1
    second = run_json(capsys, *resolve)
    assert evidence_rows(home) == 1, "evidence must be reused, not re-measured"
    assert second[0]["ppl_with"] == first[0]["ppl_with"]
    code = main([*resolve[:-len(common)], "--revalidate", "--min-gain", "5", *common])
    assert code == 4, "a required 500% gain is never met: exit code 4"
    assert "no compatible prompt improves" in capsys.readouterr().err
    assert evidence_rows(home) == 2


def test_demo_runs_end_to_end_and_reuses_its_work(model_dir, tmp_path, capsys, cli_env) -> None:
    corpus = str(text_file(tmp_path))
    args = ["demo", "--model", "tiny-llama", "--model-path", str(model_dir), "--dataset", corpus, "--train",
            "gptq-w4-g32", "--targets", "gptq-w2-g32,sparsegpt-s50", "--steps", "4", "--seq-len", "32",
            "--eval-windows", "4", "--calibration-windows", "4", "--num-tokens", "3", "--device", "cpu"]
    first = run_json(capsys, *args)
    assert [r["target"] for r in first["rows"]] == ["gptq-w4-g32", "gptq-w2-g32", "sparsegpt-s50"]
    assert first["rows"][0]["served"] == "tiny-llama/gptq-w4-g32/corpus:1"
    for row in first["rows"]:
        assert row["ppl_full"] > 1 and row["ppl_compressed"] > 1 and row["ppl_prompted"] > 1
    assert not first["reused_prompt"]
    more = first["continue_command"]
    assert more.startswith("ctpreg train --continue tiny-llama/gptq-w4-g32/corpus:1 --steps 4 -o ")
    second = run_json(capsys, *args)
    assert second["reused_prompt"]
    assert [r["ppl_prompted"] for r in second["rows"]] == [r["ppl_prompted"] for r in first["rows"]]
    assert all(r["note"] != "validated, served" for r in second["rows"][1:])
    # The command it prints does continue its prompt (here with the tiny model's folder and corpus named).
    import shlex

    assert main([*shlex.split(more)[1:], "--model-path", str(model_dir), "--dataset", corpus, "--device", "cpu"]) == 0
    capsys.readouterr()
    continued = run_json(capsys, "show", "tiny-llama/gptq-w4-g32/corpus:2")
    assert continued["parent"]["ref"] == "tiny-llama/gptq-w4-g32/corpus:1" and continued["steps_total"] == 8


def test_demo_with_one_prompt_for_several_targets_validates_each(model_dir, tmp_path, capsys, cli_env) -> None:
    corpus = str(text_file(tmp_path))
    report = run_json(
        capsys, "demo", "--model", "tiny-llama", "--model-path", str(model_dir), "--dataset", corpus, "--train",
        "gptq-w4-g32,magnitude-s50", "--targets", "magnitude-s50,gptq-w2-g32", "--steps", "4", "--seq-len", "32",
        "--eval-windows", "4", "--calibration-windows", "4", "--num-tokens", "3", "--device", "cpu",
    )
    rows = {row["target"]: row for row in report["rows"]}
    assert list(rows) == ["gptq-w4-g32", "magnitude-s50", "gptq-w2-g32"], "each trained target once, then transfers"
    for target in ("gptq-w4-g32", "magnitude-s50"):
        assert rows[target]["note"].startswith("trained here; "), rows[target]
        assert "exact match" in rows[target]["why"] or "measured on this target" in rows[target]["why"]
    assert all(row["ppl_compressed"] > 1 for row in rows.values())
    multi = "tiny-llama/gptq-w4-g32/corpus:1"
    per_target = run_json(capsys, "show", multi)["metrics"]["targets"]
    for target in ("gptq-w4-g32", "magnitude-s50"):  # served as trained: the row is the artifact's test figures
        assert rows[target]["served"] == multi, rows[target]
        for key in ("ppl_full", "ppl_compressed", "ppl_prompted"):
            assert rows[target][key] == per_target[target][key], (target, key)


def test_generate_with_and_without_the_resolved_prompt(model_dir, tmp_path, capsys, cli_env) -> None:
    corpus = str(text_file(tmp_path))
    common = ["--model-path", str(model_dir), "--device", "cpu"]
    run_json(capsys, "train", "--model", "tiny-llama", "--method", "bnb-nf4", "--dataset", corpus, "-o",
             str(tmp_path / "p.safetensors"), "--publish", "--seq-len", "32", "--steps", "2", "--eval-every", "2",
             "--eval-windows", "2", "--num-tokens", "3", *common)
    prompted = run_json(capsys, "generate", "The quick brown", "--model", "tiny-llama", "--method", "bnb-nf4",
                        "--max-new-tokens", "5", *common)
    plain = run_json(capsys, "generate", "The quick brown", "--model", "tiny-llama", "--method", "bnb-nf4",
                     "--max-new-tokens", "5", "--no-prompt", *common)
    assert prompted["prompt"] == "tiny-llama/bnb-nf4/corpus:1" and plain["prompt"] is None
    assert prompted["completion"] and plain["completion"]
