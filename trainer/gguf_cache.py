"""GGUF models converted once into a plain transformers checkpoint under ``$CTPREG_HOME/models``.

transformers parses and dequantizes a GGUF file on every load: 26 s for SmolLM2-135M on 2 cores, most of it reading
the tokenizer's fields in Python. The converted folder (safetensors weights, the tokenizer saved by transformers)
loads in well under a second with the same weights, vocabulary and chat template. A folder is keyed by the GGUF
file's sha256 and the transformers version that dequantized it, written under a temporary name and renamed, and
every file it holds is checked against the sha256 recorded at conversion before it is loaded; a folder that fails
the check is converted again.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from ctpreg.registry.identity import file_sha256

from .catalog import ModelSource

log = logging.getLogger(__name__)

MANIFEST = "ctpreg-gguf.json"


def converted_folder(source: ModelSource, root: Path) -> Path:
    """Where ``source``'s conversion lives: one folder per GGUF file's content and transformers version."""
    import transformers

    assert source.gguf_file is not None
    gguf_sha = file_sha256(Path(source.location) / source.gguf_file)
    return root / source.slug / f"gguf-{gguf_sha[:16]}-transformers-{transformers.__version__}"


def verified(folder: Path) -> bool:
    """Whether ``folder`` is a finished conversion whose files still hash to what its manifest recorded."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        return bool(files) and all(file_sha256(folder / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def save_converted(model: Any, tokenizer: Any, source: ModelSource, folder: Path) -> None:
    """Write the dequantized model and its tokenizer as ``folder``, atomically; a concurrent writer's finished
    folder wins and this one's copy is dropped."""
    partial = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        files = {p.name: file_sha256(p) for p in sorted(partial.iterdir()) if p.is_file()}
        record = {"gguf_file": source.gguf_file, "source": source.describe(), "files": files}
        (partial / MANIFEST).write_text(json.dumps(record, indent=2, sort_keys=True))
        if folder.exists() and not verified(folder):
            log.warning("converted checkpoint %s failed its sha256 check; replacing it", folder)
            shutil.rmtree(folder)
        try:
            partial.rename(folder)
        except OSError:  # another process finished the same conversion first
            if not verified(folder):
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
