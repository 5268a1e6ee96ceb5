"""Property-based checks of every option type of the read and admin commands: whatever a user types, ctpreg answers
with its own exit code (never an escaped exception), and a non-usage error is one line."""

import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctpreg.cli.main import main
from helpers import write_artifact_file

EXAMPLES = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ALLOWED = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}  # 1: the OS refused a path the user named (one line too)
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str), st.floats(allow_nan=True).map(str),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "0x10", "²", "١٢", "", " 3", "3 "]), texts,
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(os.environ):
        if key.startswith("CTPREG_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CTPREG_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["publish", str(write_artifact_file(tmp_path / "a.st")), "--name", "team/p"]) == 0
    return tmp_path


def run(capsys: pytest.CaptureFixture, args: list[str]) -> None:
    code = main(args)
    _, err = capsys.readouterr()
    assert code in ALLOWED, (args, code, err)
    if code not in (0, 2) or (code == 2 and "Usage:" not in err):
        assert err.startswith("error: ") and err.count("\n") == 1, (args, err)


@EXAMPLES
@given(option=st.sampled_from(["--bits", "--sparsity", "--group-size", "--top-k", "--min-gain"]), value=numbers)
def test_resolve_numeric_options(home, capsys, option: str, value: str) -> None:
    run(capsys, ["resolve", "--model", "tiny-llama", option, value])


@EXAMPLES
@given(option=st.sampled_from(["--model", "--method", "--dataset", "--task"]), value=texts)
def test_resolve_text_options(home, capsys, option: str, value: str) -> None:
    args = ["resolve", option, value] if option == "--model" else ["resolve", "--model", "tiny-llama", option, value]
    run(capsys, args)


@EXAMPLES
@given(option=st.sampled_from(["--model", "--method", "--bits", "--dataset"]), value=st.one_of(texts, numbers))
def test_list_filters(home, capsys, option: str, value: str) -> None:
    run(capsys, ["list", option, value])


@EXAMPLES
@given(ref=texts)
def test_refs_in_show_fetch_and_deprecate(home, capsys, ref: str) -> None:
    for command in (["show", ref], ["fetch", ref], ["alias", "set", ref, "prod"]):
        run(capsys, command)


@EXAMPLES
@given(path=st.one_of(texts, st.sampled_from(["/dev/null", "/", ".", "..", "/proc/self/mem", "a/../../b", "\x00x"])))
def test_fetch_output_paths(home, capsys, path: str) -> None:
    if path in ("/dev/null",) and os.geteuid() == 0 and not Path(path).is_char_device():
        pytest.skip("no /dev/null here")
    run(capsys, ["fetch", "team/p:1", "-o", path])
    assert Path("/dev/null").is_char_device()


@EXAMPLES
@given(grace=numbers, alias=st.text(alphabet=string.printable, max_size=30))
def test_gc_grace_and_alias_names(home, capsys, grace: str, alias: str) -> None:
    run(capsys, ["gc", "--dry-run", "--grace", grace])
    run(capsys, ["alias", "set", "team/p:1", alias])


# The trainer commands: every option is checked before any data or model is loaded (the model named here does not
# exist, so a command that accepted every value stops at the model with a one-line error; nothing trains).
TRAIN = ["train", "--model", "no-such-model", "--method", "gptq", "--bits", "3", "-o", "p.safetensors", "--dataset",
         "corpus.txt"]
COMPRESS = ["compress", "--model", "no-such-model", "--method", "sparsegpt", "--sparsity", "0.5"]
EVAL = ["eval", "--model", "no-such-model", "--method", "none"]
TRAINER_NUMBERS = {
    "train": ["--bits", "--group-size", "--sparsity", "--num-tokens", "--steps", "--lr", "--seq-len", "--batch-size",
              "--eval-every", "--eval-windows", "--seed", "--calibration-windows"],
    "compress": ["--group-size", "--calibration-windows"],
    "eval": ["--max-windows", "--seq-len", "--calibration-windows"],
}
TRAINER_TEXTS = {
    "train": ["--method", "--nm", "--dataset", "--calibration", "--device", "--model-path", "--name", "-o", "--loss",
              "--schedule", "--targets"],
    "compress": ["--method", "--nm", "--calibration", "--device", "--format", "--save"],
    "eval": ["--method", "--prompt", "--dataset", "--text-file", "--tasks", "--device"],
}
COMMANDS = {"train": TRAIN, "compress": COMPRESS, "eval": EVAL}
VALID_DEVICES = {"auto", "cpu"}  # the only ones that would load a model on this machine


def run_trainer(capsys: pytest.CaptureFixture, args: list[str]) -> str:
    """Like ``run``, but the trainer may log (``loading ...``) before its one error line, which comes last."""
    code = main(args)
    _, err = capsys.readouterr()
    assert code in ALLOWED and code != 0, (args, code, err)
    if code != 2 or "Usage:" not in err:
        lines = err.strip().splitlines()
        assert lines[-1].startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1, (args, err)
    return err


@pytest.fixture
def trainer_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytest.importorskip("torch")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a --model-path that names no folder is tried as a hub id
    (home / "corpus.txt").write_text("A small corpus. " * 200)  # what train reads before it loads the model
    return home


@EXAMPLES
@given(command=st.sampled_from(sorted(COMMANDS)), data=st.data())
def test_trainer_numeric_options(trainer_home, capsys, command: str, data) -> None:
    option = data.draw(st.sampled_from(TRAINER_NUMBERS[command]))
    run_trainer(capsys, [*COMMANDS[command], option, data.draw(numbers)])


@EXAMPLES
@given(command=st.sampled_from(sorted(COMMANDS)), data=st.data())
def test_trainer_text_options(trainer_home, capsys, command: str, data) -> None:
    option = data.draw(st.sampled_from(TRAINER_TEXTS[command]))
    value = data.draw(st.one_of(texts, st.sampled_from(["/dev/null", "/", ".", "/proc/self/mem", "\x00x", "cuda:9"])))
    if option == "--device" and value in VALID_DEVICES:
        value = "cuda:7"
    extra = ["--save", "out"] if option == "--format" else []
    run_trainer(capsys, [*COMMANDS[command], *extra, option, value])


@pytest.mark.parametrize("args, message", [
    (["--lr", "nan"], "lr must lie in (0, 1)"),
    (["--lr", "inf"], "lr must lie in (0, 1)"),
    (["--bits", "5"], "gptq supports bits"),
    (["-o", "/dev/null"], "not a regular file"),
    (["-o", "."], "empty"),
    (["--publish", "--name", "bad name!"], "name"),
    (["--device", "tpu"], "device must be auto, cpu or cuda[:N]"),
    (["--loss", "mse"], "unknown loss 'mse'"),
    (["--schedule", "random"], "unknown schedule 'random'"),
    (["--targets", "gptq-w4-g128,sparsegpt-s50"], "drop --method, --bits"),
])
def test_train_refuses_bad_values_before_loading_anything(trainer_home, capsys, args: list[str], message: str) -> None:
    real_model = ["--model", "smollm2-135m"]  # a real model: only the option can be what is refused
    err = run_trainer(capsys, [*TRAIN[:1], *real_model, *TRAIN[3:], *args])
    assert message in err and "loading" not in err, err
    assert not Path("p.safetensors").exists()
