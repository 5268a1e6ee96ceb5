"""What a measurement was taken on: the target's identity and the evaluation data's identity (DESIGN §12).

Two perplexities are comparable only when they come from the same model *and* the same token windows. Evidence
therefore names both, and the matcher reuses a measurement only when both match the request:

- **target key** — ``checkpoint:<sha>`` for a checkpoint the user gave (digest of its weight files and config, plus
  the compression it runs with), ``compressed:<sha>`` for a target ctpreg compressed itself (source model,
  fingerprint, spec and calibration tokens), ``memory:<sha>`` for an in-memory model with no files behind it, and
  ``legacy`` for evidence recorded before targets were identified (a ctpreg-compressed target of that spec).
- **eval key** — ``eval:<sha>`` over corpus, split, sequence length, window count and the digest of the token ids
  (plus the text file's sha256 when the text came from a file); ``legacy:<label>`` for old rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LEGACY = "legacy"
CHECKPOINT, COMPRESSED, MEMORY = "checkpoint", "compressed", "memory"
#: Target-key kinds a resolve by spec alone (no checkpoint, no loaded model) may reuse evidence of.
SPEC_KINDS = (COMPRESSED, LEGACY)


def digest_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def target_key(kind: str, parts: dict[str, Any]) -> str:
    """``<kind>:<sha256 of parts>``; ``parts`` must pin down the function the target computes."""
    if kind not in (CHECKPOINT, COMPRESSED, MEMORY):
        raise ValueError(f"unknown target kind {kind!r}")
    return f"{kind}:{digest_json(parts)}"


@dataclass(frozen=True)
class EvalData:
    """The windows a perplexity was measured on."""

    corpus: str
    split: str
    seq_len: int
    windows: int
    token_digest: str
    source_sha256: str | None = None

    @property
    def key(self) -> str:
        return f"eval:{digest_json(asdict(self))}"

    @property
    def label(self) -> str:
        return f"{self.corpus}/{self.split}"

    def describe(self) -> str:
        return f"{self.label}, {self.windows}x{self.seq_len} tokens (ids {self.token_digest[:12]})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalData:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def legacy_eval_key(label: str) -> str:
    return f"{LEGACY}:{label}"


#: Files that decide what a checkpoint computes (weights and the configs that say how to read them).
_CHECKPOINT_FILES = ("*.safetensors", "*.bin", "config.json", "quantize_config.json", "ctpreg.json")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_key(folder: Path, compression: str) -> str:
    """Target key of a checkpoint folder run as ``compression``: sha256 of its weight and config files."""
    root = Path(folder)
    files = sorted({p for pattern in _CHECKPOINT_FILES for p in root.glob(pattern) if p.is_file()})
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise ValueError(f"{root} holds no weight files")
    return target_key(CHECKPOINT, {"files": {p.name: file_sha256(p) for p in files}, "compression": compression})


def memory_key(named_tensors: Any, compression: str) -> str:
    """Target key of an in-memory model with no files behind it: sha256 over its tensors' bytes (torch tensors)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return target_key(MEMORY, {"tensors": digest.hexdigest(), "compression": compression})
