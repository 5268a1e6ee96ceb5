"""Writing files whole: one temp-file-and-rename writer for the object store, the cache and ``fetch -o``.

Readers see the old file or the new one, never half of one, and a failure leaves no temp file behind. Files get the
permissions any new file gets under the process umask (``mkstemp`` alone would make them 0600, unreadable to the
other users of a shared store).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import InvalidInput


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def atomic_write(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename (``durable``: fsync first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    atomic_write(check_output(path), data)
    return path
