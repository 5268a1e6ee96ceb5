"""Adversarial inputs and faults: each gets a one-line error and a non-zero exit, and nothing is lost."""

import json
import os
import stat
import time
from pathlib import Path

import pytest

from ctpreg.cli.main import main
from ctpreg.registry.errors import InvalidInput
from ctpreg.registry.refs import check_alias, check_fingerprint, check_model_name, check_name, parse_ref
from ctpreg.registry.compression import parse_compression
from ctpreg.registry.stores import open_store
from helpers import FP_A, write_artifact_file


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def objects(home: Path) -> list[Path]:
    return sorted(p for p in (home / "objects").rglob("*") if p.is_file())


@pytest.mark.parametrize("check, value", [
    (check_name, "team/p\n"), (check_alias, "prod\n"), (check_model_name, "llama-7b\n"),
    (check_fingerprint, FP_A + "\n"), (parse_compression, "gptq-w3-g128\nx"),
])
def test_a_trailing_newline_is_not_part_of_a_valid_name(check, value: str) -> None:
    with pytest.raises(InvalidInput):
        check(value)


@pytest.mark.parametrize("ref", ["x:99999999999999999999", "x:²", "x:١", "x:0", "x:-1", "x:1\n2", "x@prod\n"])
def test_odd_versions_and_refs_are_one_line_errors(ref: str, cli_env, capsys) -> None:
    with pytest.raises(InvalidInput):
        parse_ref(ref)
    code, out, err = cli(capsys, "show", ref)
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("spec", ["gptq-w٣-g128", "gptq-w3-g99999999999999999999", "sparsegpt-s50\n", "magnitude-n2m٤"])
def test_compressions_with_odd_digits_are_refused(spec: str) -> None:
    with pytest.raises(InvalidInput):
        parse_compression(spec)


@pytest.mark.parametrize("url", ["file://relative/path", "file:", "file:objects", "file:///tmp/a%00b",
                                 "s3://Bad_Bucket", "s3://bucket/a%00b", "s3://"])
def test_store_urls_that_would_land_elsewhere_are_refused(url: str, cli_env, monkeypatch, capsys) -> None:
    with pytest.raises(InvalidInput):
        open_store(url)
    monkeypatch.setenv("CTPREG_STORE_URL", url)
    code, _, err = cli(capsys, "gc", "--dry-run")
    assert code == 2 and err.count("\n") == 1


def test_bad_s3_endpoint_is_refused(monkeypatch) -> None:
    with pytest.raises(InvalidInput, match="endpoint"):
        open_store("s3://bucket", s3_endpoint_url="localhost:9000")


def test_fetch_output_never_replaces_special_files(cli_env, tmp_path: Path, capsys) -> None:
    assert cli(capsys, "publish", str(write_artifact_file(tmp_path / "a.st")), "--name", "team/p")[0] == 0
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target, message in [(fifo, "not a regular file"), (tmp_path, "a directory"), (Path(""), "empty"),
                            (tmp_path / "missing" / "f", "does not exist")]:
        code, _, err = cli(capsys, "fetch", "team/p", "-o", str(target))
        assert code == 2 and message in err and err.count("\n") == 1, (target, err)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    out = tmp_path / "out.safetensors"
    assert cli(capsys, "fetch", "team/p", "-o", str(out))[0] == 0
    assert out.read_bytes() == (tmp_path / "a.st").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_stored_objects_follow_the_umask(cli_env, tmp_path: Path, capsys) -> None:
    previous = os.umask(0o022)
    try:
        assert cli(capsys, "publish", str(write_artifact_file(tmp_path / "a.st")), "--name", "team/p")[0] == 0
        assert cli(capsys, "fetch", "team/p", "-o", str(tmp_path / "out"))[0] == 0
    finally:
        os.umask(previous)
    home = Path(cli_env["CTPREG_HOME"])
    for path in [*objects(home), tmp_path / "out"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_markup_in_metadata_is_printed_literally(cli_env, tmp_path: Path, capsys) -> None:
    path = write_artifact_file(tmp_path / "a.st", dataset="[/bold]", task="[link=https://evil.example]x[/link]")
    code, _, err = cli(capsys, "publish", str(path))
    assert code == 2 and "invalid prompt name" in err  # the default name would hold the brackets
    assert cli(capsys, "publish", str(path), "--name", "team/p")[0] == 0
    for args in (["list"], ["show", "team/p"], ["resolve", "--model", "tiny-llama"]):
        code, out, err = cli(capsys, *args)
        assert code == 0 and "[/bold]" in out + err, (args, err)
    code, out, _ = cli(capsys, "show", "team/p")
    assert "[link=https://evil.example]x[/link]" in out


def test_gc_refuses_an_empty_db_in_front_of_a_full_store_and_reindex_restores(cli_env, tmp_path, capsys) -> None:
    for seed in (1, 2):
        cli(capsys, "publish", str(write_artifact_file(tmp_path / f"{seed}.st", seed=seed)), "--name", f"team/p{seed}")
    home = Path(cli_env["CTPREG_HOME"])
    before = objects(home)
    (home / "registry.db").unlink()  # the DB is lost; a fresh one is created empty
    code, _, err = cli(capsys, "gc", "--grace", "0")
    assert code == 6 and "ctpreg reindex" in err and objects(home) == before
    code, out, _ = cli(capsys, "reindex", "--json")
    assert code == 0 and len(json.loads(out)) == 2
    code, _, _ = cli(capsys, "gc", "--grace", "0")
    assert code == 0 and objects(home) == before
    assert cli(capsys, "show", "tiny-llama/gptq-w3-g128/wiki")[0] == 0


def test_gc_removes_aged_partial_uploads_only(cli_env, tmp_path, capsys) -> None:
    cli(capsys, "publish", str(write_artifact_file(tmp_path / "a.st")), "--name", "team/p")
    home = Path(cli_env["CTPREG_HOME"])
    folder = objects(home)[0].parent
    old, young = folder / ".abc.safetensors.x1.tmp", folder / ".def.safetensors.x2.tmp"
    for path in (old, young):
        path.write_bytes(b"half an object")
    stamp = time.time() - 7200
    os.utime(old, (stamp, stamp))
    code, _, _ = cli(capsys, "gc")
    assert code == 0 and not old.exists() and young.exists()


@pytest.mark.parametrize("grace", ["inf", "nan", "-1", "1e400"])
def test_gc_grace_must_be_a_sane_number(grace: str, cli_env, capsys) -> None:
    code, _, err = cli(capsys, "gc", "--grace", grace)
    assert code == 2 and "Traceback" not in err


@pytest.mark.parametrize("args", [["list", "--bogus"], ["resolve", "--model", "m", "--bits", "abc"], ["nosuchcommand"],
                                  ["fetch"], ["gc", "--grace", "x"]])
def test_usage_errors_print_usage_and_exit_2(args: list[str], cli_env, capsys) -> None:
    code, out, err = cli(capsys, *args)
    assert code == 2 and "Usage:" in err and "Traceback" not in err


def test_cache_entries_are_checked_against_the_ref_they_answer(cli_env, tmp_path, capsys, monkeypatch) -> None:
    import json

    shas = {}
    for seed in (1, 2):
        cli(capsys, "publish", str(write_artifact_file(tmp_path / f"{seed}.st", seed=seed)), "--name", f"team/p{seed}")
        code, out, _ = cli(capsys, "fetch", f"team/p{seed}:1", "--json")
        shas[seed] = json.loads(out)["sha256"]
    home = Path(cli_env["CTPREG_HOME"])
    entries = sorted((p for p in home.rglob("refs/prompts/*.json")), key=lambda p: p.stat().st_mtime)
    assert len(entries) == 2
    entries[1].write_bytes(entries[0].read_bytes())  # p2's entry now holds p1's record
    code, out, _ = cli(capsys, "fetch", "team/p2:1", "--json")
    assert code == 0 and json.loads(out)["sha256"] == shas[2]
    for corrupt in (b"\xff\xfe", b"[1, 2]", b'{"key": {"ref": "team/p2:1"}, "value": {"prompt": {"name": 3}}}',
                    b"{" * 5000):
        entries[1].write_bytes(corrupt)
        monkeypatch.delenv("CTPREG_OFFLINE", raising=False)
        code, out, _ = cli(capsys, "fetch", "team/p2:1", "--json")
        assert code == 0 and json.loads(out)["sha256"] == shas[2]  # a miss: asked the registry again
        entries[1].write_bytes(corrupt)
        monkeypatch.setenv("CTPREG_OFFLINE", "1")
        code, _, err = cli(capsys, "fetch", "team/p2:1")
        assert code == 11 and err.count("\n") == 1, err


def _artifact_with(tmp_path: Path, header_text: str | None = None, **metadata_strings: str) -> Path:
    """The helper artifact with some ``__metadata__`` strings replaced (or its whole header text)."""
    import json
    import struct

    from helpers import artifact_bytes

    good = artifact_bytes(4)
    (length,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + length])
    header["__metadata__"].update(metadata_strings)
    text = (header_text if header_text is not None else json.dumps(header)).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + good[8 + length :])
    return path


@pytest.mark.parametrize("case, fields, message", [
    ("NaN metric", {"metrics": '{"ppl_full": NaN}'}, "not a JSON number"),
    ("Infinity", {"training": '{"lr": Infinity}'}, "not a JSON number"),
    ("1e400", {"metrics": '{"ppl_full": 1e400}'}, "overflows"),
    ("5000 digits", {"training": '{"seed": ' + "9" * 5000 + "}"}, "digits"),
    ("deep nesting", {"training": "[" * 5000 + "]" * 5000}, "JSON"),
    ("multi-megabyte training", {"training": '{"x": "' + "a" * 200_000 + '"}'}, "larger than"),
    ("negative perplexity", {"metrics": '{"ppl_full": -3}'}, "perplexity"),
    ("control character", {"dataset": "wiki\x1b[31m"}, "printable"),
    ("NUL in task", {"task": "a\x00b"}, "NUL"),
    ("long task", {"task": "t" * 300}, "printable"),
    ("absurd token count", {"num_virtual_tokens": "99999999999"}, "positive integer"),
])
def test_odd_metadata_is_refused_before_any_upload(case, fields, message, cli_env, tmp_path, capsys) -> None:
    code, _, err = cli(capsys, "publish", str(_artifact_with(tmp_path, **fields)))
    assert code == 2 and message in err and err.count("\n") == 1, (case, err)
    home = Path(cli_env["CTPREG_HOME"])
    assert not (home / "objects").exists() or objects(home) == []


def test_duplicate_metadata_keys_are_refused(cli_env, tmp_path, capsys) -> None:
    import json
    import struct

    from helpers import artifact_bytes

    good = artifact_bytes(4)
    (length,) = struct.unpack("<Q", good[:8])
    text = good[8 : 8 + length].decode().rstrip()
    doubled = text.replace('"dataset":"wiki"', '"dataset":"wiki","dataset":"other"')
    assert doubled != text and json.loads(doubled)
    code, _, err = cli(capsys, "publish", str(_artifact_with(tmp_path, header_text=doubled)))
    assert code == 2 and "duplicate" in err


def test_a_name_longer_than_the_column_is_refused(cli_env, tmp_path, capsys) -> None:
    name = "/".join(["a" * 100] * 6)
    code, _, err = cli(capsys, "publish", str(write_artifact_file(tmp_path / "a.st")), "--name", name)
    assert code == 2 and "at most 512" in err


def test_a_store_failure_after_the_commit_does_not_report_a_committed_publish_as_failed(registry, monkeypatch) -> None:
    from ctpreg.registry.errors import StoreError
    from helpers import artifact_bytes

    calls = {"n": 0}
    real_exists = registry.store.exists

    def flaky_exists(key: str) -> bool:
        calls["n"] += 1
        if calls["n"] > 1:  # the check after the DB commit
            raise StoreError("S3 head failed: connection reset")
        return real_exists(key)

    monkeypatch.setattr(registry.store, "exists", flaky_exists)
    result = registry.publish_bytes(artifact_bytes(8), name="team/after", alias="prod")
    monkeypatch.undo()
    assert result.created and registry.get("team/after@prod").sha256 == result.prompt.sha256


def test_a_mistyped_sqlite_url_creates_nothing(cli_env, tmp_path, monkeypatch, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'typo' / 'registy.db'}"
    monkeypatch.setenv("CTPREG_DB_URL", url)
    code, _, err = cli(capsys, "list")
    assert code == 10 and "ctpreg db upgrade" in err and not (tmp_path / "typo").exists()
    assert cli(capsys, "db", "upgrade")[0] == 0 and (tmp_path / "typo" / "registy.db").is_file()
    assert cli(capsys, "list")[0] == 0


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe not utf-8", "UTF-8"), (b"db_url = ", "TOML"), (b"ctpreg = 3", "table"),
    (b"db_url = 5", "must be a string"), (b"colour = 'x'", "unknown keys"),
])
def test_bad_config_files_are_one_line_errors(
    content: bytes, message: str, cli_env, tmp_path, monkeypatch, capsys
) -> None:
    config = tmp_path / "ctpreg.toml"
    config.write_bytes(content)
    monkeypatch.setenv("CTPREG_CONFIG", str(config))
    code, _, err = cli(capsys, "list")
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_missing_named_config_file_is_an_error(cli_env, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CTPREG_CONFIG", str(tmp_path / "nope.toml"))
    code, _, err = cli(capsys, "list")
    assert code == 2 and "not a file" in err


@pytest.mark.parametrize("content", [b"[1, 2]", b"\xff", b'{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": true}',
                                     b'{"a": 1, "a": 2}'])
def test_odd_peft_configs_are_refused(content: bytes, cli_env, tmp_path, capsys) -> None:
    assert cli(capsys, "models", "add", "tiny-llama", "--fingerprint", FP_A, "--hidden-size", "8",
               "--vocab-size", "320")[0] == 0
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes(content)
    code, _, err = cli(capsys, "import", "--peft", str(folder), "--model", "tiny-llama", "--method", "gptq",
                       "--bits", "3", "--dataset", "wiki")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err


def test_the_python_client_raises_only_ctpreg_errors(cli_env, tmp_path, capsys) -> None:
    from ctpreg.registry import Client, CtpregError

    cli(capsys, "publish", str(write_artifact_file(tmp_path / "a.st")), "--name", "team/p")
    client = Client.from_env()
    for bad in (None, 3, b"team/p", ["team/p"]):
        with pytest.raises(CtpregError):
            client.fetch(bad)
    with pytest.raises(CtpregError):
        client.resolve(None)
    cache = Path(cli_env["CTPREG_HOME"]) / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o500)  # a read-only cache folder
    try:
        if os.access(cache, os.W_OK):  # root ignores permissions: make the cache a file instead
            cache.chmod(0o700)
            cache.rmdir()
            cache.write_text("not a folder")
        with pytest.raises(CtpregError):
            Client.from_env().fetch("team/p")
    finally:
        if cache.is_dir():
            cache.chmod(0o700)


def test_first_use_prints_no_alembic_lines_even_under_an_info_root_logger(cli_env) -> None:
    import subprocess
    import sys

    script = ("import logging; logging.basicConfig(level=logging.INFO); "
              "from ctpreg.cli.main import main; raise SystemExit(main(['list']))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **cli_env})
    assert proc.returncode == 0 and "alembic" not in proc.stderr + proc.stdout, proc.stderr


@pytest.mark.parametrize("option", [["--group-size", "99999999999999999999"], ["--dataset", "a\x1bb"],
                                    ["--bits", "99999999999999999999"], ["--sparsity", "nan"], ["--task", "t" * 300]])
def test_resolve_options_out_of_range_are_one_line_errors(option, cli_env, tmp_path, capsys) -> None:
    cli(capsys, "publish", str(write_artifact_file(tmp_path / "a.st")), "--name", "team/p")  # a registered model
    code, _, err = cli(capsys, "resolve", "--model", "tiny-llama", *option)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("option", [["--bits", "9223372036854775808"], ["--dataset", "\x00"], ["--model", "m" * 300]])
def test_list_filters_out_of_range_are_one_line_errors(option, cli_env, capsys) -> None:
    code, _, err = cli(capsys, "list", *option)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
