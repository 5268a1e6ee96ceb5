"""torch's thread count: each trainer command sets it (``--threads``) and leaves the process as it found it."""

import logging
from pathlib import Path

import pytest
import torch

from ctpreg.cli.main import main
from ctpreg.trainer.threads import cpus_available, torch_threads
from tiny import text_file

TORCH_COMMANDS = [["compress"], ["train"], ["eval"], ["generate"], ["demo"], ["resolve"]]


def test_torch_threads_sets_the_count_inside_and_restores_it_after(monkeypatch) -> None:
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("ctpreg.trainer.threads")
    monkeypatch.setattr(logger, "handlers", [handler])  # whatever other tests left on the "ctpreg" logger
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "level", logging.INFO)
    before = torch.get_num_threads()
    with torch_threads(1) as count:
        assert count == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None) as count:
        assert count == torch.get_num_threads() == cpus_available()
    assert torch.get_num_threads() == before
    assert said == [
        f"torch: 1 thread(s) (--threads 1; default: the {cpus_available()} CPU(s) this process may use)",
        f"torch: {cpus_available()} thread(s) (default: the {cpus_available()} CPU(s) this process may use)",
    ]


def test_the_count_is_restored_when_the_work_fails() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_ranks_of_a_launcher_share_the_cpus_by_default(monkeypatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cpus_available()))
    with torch_threads(None) as count:
        assert count == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    with torch_threads(None) as count:
        assert count == cpus_available()


@pytest.mark.parametrize("command", TORCH_COMMANDS)
def test_every_command_that_runs_torch_takes_threads(command, capsys, cli_env, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # each option's help on one line of the table
    assert main([*command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--threads" in out and "CPUs this process may use" in out, command


def test_eval_runs_with_the_threads_asked_for_and_leaves_torch_as_it_was(tiny_model_dir: Path, tmp_path: Path,
                                                                          capsys, cli_env, monkeypatch) -> None:
    from ctpreg.trainer import pipeline

    seen = []
    real = pipeline.evaluate_conditions
    monkeypatch.setattr(pipeline, "evaluate_conditions",
                        lambda *a, **kw: seen.append(torch.get_num_threads()) or real(*a, **kw))
    before = torch.get_num_threads()
    code = main(["eval", "--model", "tiny-llama", "--model-path", str(tiny_model_dir), "--method", "magnitude",
                 "--sparsity", "0.5", "--text-file", str(text_file(tmp_path)), "--seq-len", "32", "--max-windows",
                 "2", "--device", "cpu", "--threads", "1", "--json"])
    assert code == 0, capsys.readouterr().err
    assert seen == [1] and torch.get_num_threads() == before
    assert "torch: 1 thread(s) (--threads 1;" in capsys.readouterr().err
