"""Writing files whole: one temp-file-and-rename writer for the object store, the cache, training checkpoints and
the files users name (``fetch -o``, ``report -o``).

Readers see the old file or the new one, never half of one, and a failure leaves no temp file behind.

Modes. Each temp file is created with its kind's mode, and the kernel takes the process umask off it at creation.
The umask is never read or changed here: ``os.umask`` is the only way to read it and it sets it too, for the whole
process, so a server thread creating a file at that moment would get the wrong mode. Creating the file with a mode
also lets a shared folder's default ACL decide instead of the umask, which a later ``chmod`` would override.

- ``SHARED`` (0o644) for objects, cache entries and training checkpoints: read by other users of a shared store or
  cache (``ctpreg serve``, a fleet's service accounts), never edited in place (a new version is a rename), so no
  write bit even under umask 002. Cache entries are copies of store objects, checked by sha256 on every read: they
  are no more private than the store; a user who wants them private sets umask 077 or a private cache folder.
- ``OUTPUT`` (0o666) for files users name: what the shell's ``>`` gives them, so the user's umask decides alone.
- Folders: ``mkdir``'s 0o777, less the umask: under umask 002 a group's publishers share a store's shard folders.

Under the usual umask 022 every file is 0o644 and every folder 0o755; under 077 each is its owner's alone.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from .errors import InvalidInput

SHARED = 0o644
OUTPUT = 0o666


def atomic_write(path: Path, data: bytes, *, mode: int = SHARED, durable: bool = False) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, created with ``mode`` less the umask, and
    a rename (``durable``: fsync first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(path, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_temp(path: Path, mode: int) -> tuple[int, Path]:
    """A new file ``.<name>.<random>.tmp`` beside ``path``, open for writing, created with ``mode`` less the umask:
    for writers that stream into it and rename it themselves (``LocalStore.partial_uploads`` finds the pattern)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), tmp
        except FileExistsError:  # another writer drew the same 64 random bits: draw again
            continue


def check_output(path: Path) -> Path:
    """A file the user named (``-o PATH``) must be a new or existing regular file in an existing folder.
    Directories, FIFOs, devices and sockets are refused: renaming over them would replace them with a file."""
    if not str(path).strip() or str(path) == ".":
        raise InvalidInput("the output path is empty")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror or exc}") from None
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise InvalidInput(f"{path} is {kind}; name a file to write")
    if not path.parent.is_dir():
        raise InvalidInput(f"cannot write {path}: the folder {path.parent} does not exist")
    return path


def write_output(path: Path, data: bytes) -> Path:
    """Write ``data`` whole to the file the user named (checked by ``check_output``)."""
    atomic_write(check_output(path), data, mode=OUTPUT)
    return path
