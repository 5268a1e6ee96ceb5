"""Compounding runs from the command line on a tiny model: continue a published prompt to where one long run ends,
warm-start from the registry's best, and refuse a missing, tampered or contradicted state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctpreg.cli.main import main
from ctpreg.registry.artifacts import read_artifact
from ctpreg.registry.lineage import state_beside, state_key
from tiny import text_file

NAME = "tiny-llama/magnitude-s50/corpus"
RUN = ["--seq-len", "32", "--eval-every", "5", "--eval-windows", "4", "--num-tokens", "3", "--device", "cpu",
       "--threads", "1"]


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def trained(tiny_model_dir, tmp_path, capsys, cli_env) -> dict:
    """A 10-step WSD prompt, published with its optimizer state."""
    corpus = text_file(tmp_path)
    base = ["--model", "tiny-llama", "--model-path", str(tiny_model_dir)]
    spec = ["--method", "magnitude", "--sparsity", "0.5", "--dataset", str(corpus)]
    out = tmp_path / "p1.safetensors"
    code, stdout, err = run(capsys, "train", *base, *spec, *RUN, "--steps", "10", "-o", str(out), "--publish",
                            "--json")
    assert code == 0, err
    return {"base": base, "spec": spec, "corpus": corpus, "out": out, "report": json.loads(stdout),
            "store": Path(cli_env["CTPREG_HOME"]) / "objects"}


def test_a_continued_prompt_ends_where_one_long_run_ends(trained, tmp_path, capsys) -> None:
    first = read_artifact(trained["out"])[0].metadata
    assert first.lineage.steps_total == 10 and first.lineage.state_sha256 is not None
    assert state_beside(trained["out"]).is_file()
    continued = tmp_path / "p2.safetensors"
    code, _, err = run(capsys, "train", "--continue", f"{NAME}:1", "--steps", "30", "--model-path",
                       str(trained["base"][3]), "--dataset", str(trained["corpus"]), "--eval-every", "5",
                       "--device", "cpu", "--threads", "1", "-o", str(continued), "--publish")
    assert code == 0, err
    straight = tmp_path / "p3.safetensors"
    code, _, err = run(capsys, "train", *trained["base"], *trained["spec"], *RUN, "--steps", "40", "-o",
                       str(straight))
    assert code == 0, err
    after, single = read_artifact(continued)[0].metadata, read_artifact(straight)[0].metadata
    assert after.lineage.parent_ref == f"{NAME}:1" and after.training["init"] == f"continue:{NAME}:1"
    assert after.lineage.steps_total == single.lineage.steps_total == 40
    # The state at the stable end (step 32) is the same object, bit for bit, and so is every select check after the
    # parent's stable end (step 8, where the continued run starts and checks first); before it, the parent's checks.
    assert after.lineage.state_sha256 == single.lineage.state_sha256
    assert [p for p in after.lineage.select_curve if p[0] > 8] == [p for p in single.lineage.select_curve if p[0] > 8]
    assert [p[0] for p in after.lineage.select_curve if p[0] <= 8] == [0, 5, 8]
    code, stdout, _ = run(capsys, "show", f"{NAME}:2", "--json")
    shown = json.loads(stdout)
    assert shown["parent"]["ref"] == f"{NAME}:1" and shown["steps_total"] == 40
    code, stdout, _ = run(capsys, "show", f"{NAME}:2")
    assert f"lineage: {NAME}:2 (40 steps" in stdout + _ and f"<- {NAME}:1 (10 steps" in stdout + _
    chart = tmp_path / "curve.png"
    code, _, err = run(capsys, "report", "--model", "tiny-llama", "--format", "curve", "-o", str(chart))
    assert code == 0, err
    from PIL import Image

    drawn = json.loads(Image.open(chart).info["Description"])
    assert list(drawn) == [f"{NAME}:2"] and drawn[f"{NAME}:2"][-1] == list(after.lineage.select_curve[-1])


def test_warm_start_auto_takes_the_served_prompt_as_parent(trained, tmp_path, capsys) -> None:
    out = tmp_path / "warm.safetensors"
    code, _, err = run(capsys, "train", *trained["base"], *trained["spec"], *RUN[:-6], "--device", "cpu",
                       "--steps", "5", "--init", "auto", "-o", str(out))
    assert code == 0, err
    meta = read_artifact(out)[0].metadata
    assert meta.lineage.parent_ref == f"{NAME}:1" and meta.training["init"] == f"init:{NAME}:1"
    assert meta.lineage.steps_total == 15 and meta.num_virtual_tokens == 3  # the parent's count, its 10 steps + 5
    assert meta.lineage.select_curve[0][0] == 0 and any(step > 10 for step, _ in meta.lineage.select_curve)


def test_continue_refuses_options_that_would_change_its_parents_settings(trained, tmp_path, capsys) -> None:
    code, _, err = run(capsys, "train", "--continue", f"{NAME}:1", "--steps", "5", "--lr", "0.1", "--num-tokens",
                       "4", "-o", str(tmp_path / "x.safetensors"))
    assert code == 2 and "drop --num-tokens, --lr" in err and not (tmp_path / "x.safetensors").exists()


def test_continue_refuses_a_tampered_or_missing_state(trained, tmp_path, capsys) -> None:
    sha = read_artifact(trained["out"])[0].metadata.lineage.state_sha256
    path = trained["store"] / state_key(sha)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    args = ["train", "--continue", f"{NAME}:1", "--steps", "5", "--model-path", str(trained["base"][3]),
            "--dataset", str(trained["corpus"]), "--device", "cpu", "-o", str(tmp_path / "x.safetensors")]
    code, _, err = run(capsys, *args)
    assert code == 7 and "Traceback" not in err
    path.unlink()
    code, _, err = run(capsys, *args)
    assert code != 0 and "Traceback" not in err and not (tmp_path / "x.safetensors").exists()


def test_a_prompt_without_state_cannot_be_continued_but_can_seed_a_warm_start(trained, tmp_path, capsys) -> None:
    cosine = tmp_path / "cos.safetensors"
    code, _, err = run(capsys, "train", *trained["base"], *trained["spec"], *RUN, "--steps", "6", "--lr-schedule",
                       "cosine", "-o", str(cosine), "--publish", "--name", "tiny/cosine")
    assert code == 0, err
    assert not state_beside(cosine).exists()
    code, _, err = run(capsys, "train", "--continue", "tiny/cosine:1", "--steps", "5", "-o",
                       str(tmp_path / "x.safetensors"))
    assert code == 2 and "--init tiny/cosine:1" in err
