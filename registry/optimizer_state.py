"""The bytes of an optimizer state object: what ``ctpreg train --continue`` starts from (DESIGN §13).

One safetensors file, read with safetensors' numpy API (never pickle): float32 tensors of one shape (the prompt at
the end of its run's stable phase and the optimizer's moments, as ``trainer.stable_state`` names them) and, in
``__metadata__``, ``format=ctpreg-state/1`` and ``state`` (JSON: the step it stopped at and what must match to
continue exactly). This module checks the structure; the trainer checks what the values mean. Content-addressed
and immutable like prompts, stored under ``states/`` (``lineage.state_key``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import strict_json
from .errors import InvalidArtifact, InvalidInput
from .lineage import MAX_STATE_BYTES
from .safetensors_header import canonical, header_metadata, read_header

FORMAT = "ctpreg-state/1"
MAX_TENSORS = 8
MAX_META_BYTES = 64 * 1024


def serialize_state(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """The object's bytes (deterministic for the same arrays and metadata)."""
    from safetensors.numpy import save

    _check_arrays(arrays, "state")
    text = strict_json.dumps(meta, "state metadata", max_bytes=MAX_META_BYTES)
    return canonical(save({key: np.ascontiguousarray(value) for key, value in arrays.items()},
                          metadata={"format": FORMAT, "state": text}))


def parse_state(data: bytes, source: str = "state") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of a state object, or ``InvalidArtifact`` saying what is wrong (nothing unpickled)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    if len(data) > MAX_STATE_BYTES:
        raise InvalidArtifact(f"{source}: larger than {MAX_STATE_BYTES} bytes; not an optimizer state")
    try:
        header = read_header(data, MAX_META_BYTES * 2)
        metadata = header_metadata(header)
        if any(info.get("dtype") != "F32" for name, info in header.items() if name != "__metadata__"):
            raise InvalidArtifact("its tensors must be float32")
        arrays = load(data)
    except InvalidArtifact as exc:
        raise InvalidArtifact(f"{source}: {exc}") from None
    except (SafetensorError, ValueError, TypeError, AttributeError) as exc:
        raise InvalidArtifact(f"{source}: not a safetensors optimizer state ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise InvalidArtifact(f"{source}: format is {metadata.get('format')!r}, expected {FORMAT!r}")
    try:
        _check_arrays(arrays, source)
        meta = strict_json.loads(metadata.get("state", ""), f"{source} metadata", max_bytes=MAX_META_BYTES)
    except InvalidInput as exc:
        raise InvalidArtifact(str(exc)) from None
    if not isinstance(meta, dict):
        raise InvalidArtifact(f"{source}: its state metadata is not a JSON object")
    return arrays, meta


def _check_arrays(arrays: dict[str, np.ndarray], source: str) -> None:
    if not arrays or len(arrays) > MAX_TENSORS:
        raise InvalidInput(f"{source}: expected 1..{MAX_TENSORS} tensors, found {len(arrays)}")
    shapes = {value.shape for value in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise InvalidInput(f"{source}: every tensor must be 2-D and of one shape, found {sorted(map(str, shapes))}")
    for key, value in arrays.items():
        if value.dtype != np.float32:
            raise InvalidInput(f"{source}: tensor {key} is {value.dtype}, expected float32")
        if not np.isfinite(value).all():
            raise InvalidInput(f"{source}: tensor {key} holds NaN or Inf")
