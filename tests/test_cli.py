"""The ``ctpreg`` command end to end on the embedded defaults (SQLite + folder under CTPREG_HOME)."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from ctpreg.cli.main import main
from ctpreg.registry.db.engine import SCHEMA_REVISION
from helpers import FP_B, artifact_bytes, metadata, write_artifact_file


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture, *args: str):
    code, out, err = cli(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def _state(home: Path) -> tuple[int, list[str]]:
    """(prompt rows, object files) under a CTPREG_HOME."""
    objects = (
        sorted(str(p) for p in (home / "objects").rglob("*") if p.is_file()) if (home / "objects").exists() else []
    )
    if not (home / "registry.db").exists():
        return 0, objects
    import sqlite3

    with sqlite3.connect(home / "registry.db") as conn:
        return conn.execute("SELECT count(*) FROM prompt").fetchone()[0], objects


def test_walkthrough_publish_list_resolve_fetch(cli_env, tmp_path, capsys) -> None:
    path = write_artifact_file(tmp_path / "p.safetensors", seed=1)
    first = cli_json(capsys, "publish", str(path))
    again = cli_json(capsys, "publish", str(path))
    assert first["version"] == again["version"] == 1 and again["created"] is False
    listed = cli_json(capsys, "list")
    assert [(p["name"], p["version"]) for p in listed] == [("tiny-llama/gptq-w3-g128/wiki", 1)]
    candidates = cli_json(capsys, "resolve", "--model", "tiny-llama", "--method", "gptq", "--bits", "3")
    assert {"name", "version", "sha256", "tier", "explanation"} <= set(candidates[0])
    assert candidates[0]["tier"] == 2
    out = tmp_path / "out.safetensors"
    code, _, err = cli(capsys, "fetch", f"{first['name']}:1", "-o", str(out))
    assert code == 0, err
    assert out.read_bytes() == path.read_bytes()
    shown = cli_json(capsys, "show", first["sha256"][:8])
    assert shown["sha256"] == first["sha256"] and shown["aliases"] == ["latest"]


def test_card_example_bits_only(cli_env, tmp_path, capsys) -> None:
    code, _, err = cli(
        capsys, "models", "add", "llama-7b", "--fingerprint", FP_B, "--hidden-size", "8", "--vocab-size", "32000"
    )
    assert code == 0, err
    for seed, compression in enumerate(["gptq-w3-g128", "gptq-w4-g128", "sparsegpt-s50"]):
        data = artifact_bytes(seed, model="llama-7b", fp=FP_B, compression=compression)
        (tmp_path / f"{seed}.safetensors").write_bytes(data)
        assert cli(capsys, "publish", str(tmp_path / f"{seed}.safetensors"))[0] == 0
    candidates = cli_json(capsys, "resolve", "--model", "llama-7b", "--bits", "3")
    assert [c["tier"] for c in candidates] == [2, 3, 4]
    assert candidates[0]["name"] == "llama-7b/gptq-w3-g128/wiki"
    code, out, err = cli(capsys, "resolve", "--model", "llama-7b", "--bits", "3")
    assert code == 0 and "llama-7b/gptq-w3-g128/wiki:1" in out + err
    models = cli_json(capsys, "models", "list")
    assert models[0]["vocab_size"] == 32000


def test_no_compatible_prompt_exits_3(cli_env, capsys) -> None:
    code, out, err = cli(capsys, "resolve", "--model", "llama-7b", "--bits", "3", "--json")
    assert code == 3 and out == "" and "not registered" in err


def test_alias_deprecate_gc(cli_env, tmp_path, capsys) -> None:
    for seed in (1, 2):
        cli(capsys, "publish", str(write_artifact_file(tmp_path / f"{seed}.st", seed=seed)), "--name", "team/p")
    assert cli(capsys, "alias", "set", "team/p:1", "prod")[0] == 0
    assert cli_json(capsys, "show", "team/p@prod")["version"] == 1
    assert cli(capsys, "deprecate", "team/p:2")[0] == 0
    assert cli_json(capsys, "show", "team/p")["version"] == 1
    assert cli_json(capsys, "gc", "--grace", "0")["objects"] == []


def _bad_artifacts(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = metadata().to_strings()
    ones = np.ones((4, 8), np.float32)
    cases = {
        "wrong tensor name": (save({"embeddings": ones}, metadata=good), "exactly one tensor"),
        "1-D tensor": (save({"prompt_embeddings": np.ones(8, np.float32)}, metadata=good), "must be 2-D"),
        "3-D tensor": (save({"prompt_embeddings": np.ones((1, 4, 8), np.float32)}, metadata=good), "must be 2-D"),
        "NaN": (save({"prompt_embeddings": np.full((4, 8), np.nan, np.float32)}, metadata=good), "NaN or Inf"),
        "Inf": (save({"prompt_embeddings": np.full((4, 8), -np.inf, np.float32)}, metadata=good), "NaN or Inf"),
        "pickle": (pickle.dumps({"prompt_embeddings": ones}), "not a safetensors file"),
        "truncated": (artifact_bytes(1)[:-10], "not a readable safetensors"),
        "empty": (b"", "empty file"),
        "missing keys": (save({"prompt_embeddings": ones}, metadata={"format": "ctpreg-prompt/1"}), "missing keys"),
        "bad bits": (save({"prompt_embeddings": ones}, metadata={**good, "compression": "gptq-w5-g128"}),
                     "supports bits"),
        "unknown method": (save({"prompt_embeddings": ones}, metadata={**good, "compression": "awq-s50"}),
                           "unknown compression method"),
        "bad sparsity": (save({"prompt_embeddings": ones}, metadata={**good, "compression": "sparsegpt-s120"}),
                         "between 0 and 1"),
    }
    paths = {}
    for label, (data, message) in cases.items():
        path = tmp_path / f"{label.replace(' ', '_')}.safetensors"
        path.write_bytes(data)
        paths[label] = (path, message)
    return paths


def test_bad_input_is_one_clear_line_nonzero_and_writes_nothing(cli_env, tmp_path, capsys) -> None:
    home = Path(cli_env["CTPREG_HOME"])
    for label, (path, message) in _bad_artifacts(tmp_path).items():
        code, out, err = cli(capsys, "publish", str(path))
        assert code != 0, label
        assert message in err and err.count("\n") == 1, (label, err)
        assert not home.exists(), f"{label}: a rejected publish must write nothing"
    cli(capsys, "publish", str(write_artifact_file(tmp_path / "ok.st", seed=1)))
    before = _state(home)
    wrong_hidden = tmp_path / "hidden.st"
    wrong_hidden.write_bytes(artifact_bytes(2, hidden=16))
    commands = {
        "hidden size disagrees": (["publish", str(wrong_hidden)], "hidden size 8"),
        "path traversal": (["publish", str(tmp_path / "ok.st"), "--name", "../../etc/x"], "invalid prompt name"),
        "bad alias": (["publish", str(wrong_hidden), "--alias", "1x"], "invalid alias"),
        "unknown alias": (["show", "tiny-llama/gptq-w3-g128/wiki@nope"], "no alias 'nope'"),
        "malformed ref": (["show", "a/b:x"], "positive integer"),
        "malformed ref 2": (["fetch", "../x"], "malformed reference"),
        "bits for method": (["resolve", "--model", "tiny-llama", "--method", "gptq", "--bits", "5"], "supports bits"),
        "sparsity range": (["resolve", "--model", "tiny-llama", "--method", "sparsegpt", "--sparsity", "1.2"],
                           "between 0 and 1"),
        "unknown method": (["resolve", "--model", "tiny-llama", "--method", "awq"], "unknown compression method"),
        "missing file": (["publish", str(tmp_path / "absent.st")], "no such file"),
    }
    for label, (args, message) in commands.items():
        code, out, err = cli(capsys, *args)
        assert code != 0 and message in err and err.count("\n") == 1, (label, code, err)
    assert _state(home) == before


def test_schema_behind_names_the_upgrade_command(tmp_path, capsys, monkeypatch) -> None:
    db = tmp_path / "pg-like.db"
    monkeypatch.setenv("CTPREG_DB_URL", f"sqlite:///{db}")
    monkeypatch.setenv("CTPREG_HOME", str(tmp_path / "home"))
    code, _, err = cli(capsys, "list")
    assert code == 10 and "ctpreg db upgrade" in err
    assert cli(capsys, "db", "upgrade")[0] == 0
    assert cli_json(capsys, "db", "current")["current"] == SCHEMA_REVISION
    assert cli(capsys, "list")[0] == 0


@pytest.mark.parametrize("args", [["--help"], ["list", "--json"], ["show", "team/p"], ["fetch", "team/p:1"],
                                  ["resolve", "--model", "tiny-llama", "--method", "gptq", "--bits", "3"]])
def test_read_commands_never_import_torch(args, cli_env, tmp_path, capsys) -> None:
    """Each read command runs to success (resolve through the ranking of a registered model) without torch."""
    assert cli(capsys, "publish", str(write_artifact_file(tmp_path / "p.st")), "--name", "team/p")[0] == 0
    code = (
        "import sys\nfrom ctpreg.cli.main import main\n"
        f"rc = main({args!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'transformers' not in sys.modules\n"
        "raise SystemExit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_offline_cli_fetches_from_cache_and_refuses_registry_commands(cli_env, tmp_path, capsys, monkeypatch) -> None:
    path = write_artifact_file(tmp_path / "p.safetensors", seed=4)
    published = cli_json(capsys, "publish", str(path))
    cli_json(capsys, "fetch", f"{published['name']}:1")
    monkeypatch.setenv("CTPREG_OFFLINE", "1")
    again = cli_json(capsys, "fetch", f"{published['name']}:1")
    assert again["sha256"] == published["sha256"]
    code, _, err = cli(capsys, "list")
    assert code == 11 and "CTPREG_OFFLINE=1" in err


def test_os_and_migration_errors_are_one_line(cli_env, tmp_path, capsys) -> None:
    path = write_artifact_file(tmp_path / "p.safetensors", seed=5)
    name = cli_json(capsys, "publish", str(path))["name"]
    code, _, err = cli(capsys, "fetch", f"{name}:1", "-o", str(tmp_path / "missing" / "x.safetensors"))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    code, _, err = cli(capsys, "db", "upgrade", "bogus")
    assert code == 2 and "bogus" in err and err.count("\n") == 1


def test_parallel_first_use_of_a_fresh_home(cli_env) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-m", "ctpreg.cli.main", "list", "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert all(code == 0 for _, _, code in results), [err for _, err, _ in results]
