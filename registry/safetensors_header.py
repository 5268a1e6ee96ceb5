"""The header of safetensors bytes, read strictly before any tensor is, and written canonically.

Prompt artifacts and optimizer states are both safetensors files that arrive from outside; their header (8-byte
little-endian length, then JSON) is parsed once here with the limits of ``strict_json``, so a pickle, a truncated
file or a hostile header is refused before the loader sees it. Writing sorts the header so equal content gives
equal bytes, and so equal content addresses.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from . import strict_json
from .errors import InvalidArtifact, InvalidInput

MAX_HEADER_BYTES = 1024 * 1024


def canonical(data: bytes) -> bytes:
    """Rewrite the header as sorted compact JSON (safetensors writes metadata in hash-map order, which differs
    between calls); the data section is untouched."""
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data[8 + header_len :]


def read_header(data: bytes, max_bytes: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    """The header as a JSON object, or ``InvalidArtifact`` saying why these are not safetensors bytes."""
    if len(data) < 8:
        raise InvalidArtifact("truncated: shorter than a safetensors header")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise InvalidArtifact("not a safetensors file (header length exceeds the file; pickle or truncated?)")
    if header_len > max_bytes:
        raise InvalidArtifact(f"safetensors header larger than {max_bytes} bytes")
    try:
        header = strict_json.loads(data[8 : 8 + header_len], "safetensors header", max_bytes=max_bytes)
    except InvalidInput as exc:
        raise InvalidArtifact(f"not a safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise InvalidArtifact("not a safetensors file (header is not a JSON object)")
    return header


def header_metadata(header: dict[str, Any]) -> dict[str, str]:
    """The header's ``__metadata__``: strings to strings."""
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidArtifact("safetensors __metadata__ must map strings to strings")
    return metadata
