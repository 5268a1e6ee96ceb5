"""File modes: every file ctpreg writes is created with its kind's mode, less the process umask, which nothing ever
changes (a server's threads write files at the same time, and a flipped umask reaches all of them)."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ctpreg.registry.artifacts import parse_artifact
from ctpreg.registry.cache import PromptCache
from ctpreg.registry.digest import sha256_hex
from ctpreg.registry.files import atomic_write, write_output
from ctpreg.registry.peft_format import export_peft
from ctpreg.registry.stores.local import LocalStore
from helpers import artifact_bytes

DATA = artifact_bytes()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Sets the process umask for the test (single-threaded here) and restores it after."""
    previous = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(previous)


def write_every_kind(root: Path) -> dict[str, Path]:
    """One file of each kind ctpreg writes, by its real writer, with the folders they create."""
    LocalStore(root / "store").put("prompts/ab/object.safetensors", DATA)
    cache = PromptCache(root / "cache")
    cache.put_stream(sha256_hex(DATA), len(DATA), [DATA])
    cache.put_ref("targets", {"model": "m"}, {"sha256": sha256_hex(DATA)})
    write_output(root / "fetched.safetensors", DATA)
    export_peft(parse_artifact(DATA), root / "peft", base_model_name_or_path="m")
    atomic_write(root / "checkpoints" / "step.safetensors", DATA, durable=True)  # trainer/train.py's checkpoint
    return {
        "object": root / "store" / "prompts" / "ab" / "object.safetensors",
        "object folder": root / "store" / "prompts" / "ab",
        "cache blob": cache.blob_path(sha256_hex(DATA)),
        "cache ref": next((root / "cache" / "refs" / "targets").iterdir()),
        "cache folder": root / "cache" / "blobs",
        "output": root / "fetched.safetensors",
        "peft weights": root / "peft" / "adapter_model.safetensors",
        "peft config": root / "peft" / "adapter_config.json",
        "checkpoint": root / "checkpoints" / "step.safetensors",
    }


# Under umask 002 (a group sharing a store) the difference shows: objects, cache entries and checkpoints are never
# edited in place, so no one gets a write bit; a user's own output is like any file the shell's ">" creates.
EXPECTED = {
    0o022: {"object": 0o644, "object folder": 0o755, "cache blob": 0o644, "cache ref": 0o644, "cache folder": 0o755,
            "output": 0o644, "peft weights": 0o644, "peft config": 0o644, "checkpoint": 0o644},
    0o002: {"object": 0o644, "object folder": 0o775, "cache blob": 0o644, "cache ref": 0o644, "cache folder": 0o775,
            "output": 0o664, "peft weights": 0o664, "peft config": 0o664, "checkpoint": 0o644},
    0o077: {"object": 0o600, "object folder": 0o700, "cache blob": 0o600, "cache ref": 0o600, "cache folder": 0o700,
            "output": 0o600, "peft weights": 0o600, "peft config": 0o600, "checkpoint": 0o600},
}


@pytest.mark.parametrize("mask", sorted(EXPECTED))
def test_each_kind_of_file_gets_its_mode_less_the_umask(tmp_path: Path, umask, mask: int) -> None:
    umask(mask)
    written = write_every_kind(tmp_path)
    assert {kind: mode(path) for kind, path in written.items()} == EXPECTED[mask]
    assert not list(tmp_path.rglob("*.tmp"))


def test_writing_never_changes_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_mask: int) -> int:
        raise AssertionError("os.umask is process-wide: another thread creating a file would get the wrong mode")

    monkeypatch.setattr(os, "umask", refuse)
    write_every_kind(tmp_path)


def test_files_created_meanwhile_by_other_threads_keep_the_process_umask(tmp_path: Path, umask) -> None:
    umask(0o077)
    stop = threading.Event()
    failures: list[BaseException] = []

    def write_objects() -> None:
        try:
            for i in range(2000):
                atomic_write(tmp_path / "objects" / f"{i % 8}", DATA[:64])
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)
        finally:
            stop.set()

    writer = threading.Thread(target=write_objects)
    writer.start()
    modes = set()
    i = 0
    while not stop.is_set():
        path = tmp_path / f"other-{i % 8}"
        path.unlink(missing_ok=True)
        with open(path, "wb"):
            pass
        modes.add(mode(path))
        i += 1
    writer.join()
    assert not failures
    assert modes == {0o600}, "a file created by another thread got a mode from a umask it never had"


@pytest.mark.parametrize("save_format", ["native", "hf"])
def test_a_saved_checkpoint_is_readable_like_the_files_beside_it(tmp_path: Path, umask, save_format: str) -> None:
    from ctpreg.registry.compression import parse_compression
    from ctpreg.trainer.checkpoint import save_checkpoint
    from tiny import tiny_llama

    loaded = tiny_llama()
    folder = save_checkpoint(loaded.model, loaded.tokenizer, parse_compression("magnitude-s50"), tmp_path / "saved",
                             packed=None, record={}, save_format=save_format)
    files = {path.name: mode(path) for path in folder.iterdir()}
    assert "model.safetensors" in files and set(files.values()) == {0o644}, files
    assert mode(folder) == 0o755
