"""Fingerprint of a model's embedding-space compatibility class (DESIGN §3).

sha256 over the sorted token→id vocabulary (special tokens included), the vocabulary size and the hidden size. It
never looks at weights, so one model loaded in fp32, fp16 or bf16, on any device, has one fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

FINGERPRINT_VERSION = "ctpreg-fp/1"


def embedding_fingerprint(vocab: Mapping[str, int], *, vocab_size: int, hidden_size: int) -> str:
    """Return ``sha256:<hex>`` for a tokenizer vocabulary and an embedding shape."""
    digest = hashlib.sha256()
    digest.update(json.dumps([FINGERPRINT_VERSION, vocab_size, hidden_size]).encode())
    for token, token_id in sorted(vocab.items(), key=lambda item: (item[1], item[0])):
        digest.update(json.dumps([token, token_id], ensure_ascii=False).encode())
        digest.update(b"\n")
    return f"sha256:{digest.hexdigest()}"
