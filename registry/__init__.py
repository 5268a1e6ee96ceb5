"""ctpreg's registry: prompt artifacts, metadata DB, object stores, matcher and the load-time client.

Torch-free, and names are loaded on first use (PEP 562), so ``ctpreg resolve`` and inference fleets import only what
they touch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "PromptArtifact": "artifacts", "PromptMetadata": "artifacts", "parse_artifact": "artifacts",
    "read_artifact": "artifacts", "write_artifact": "artifacts",
    "attach": "load_time", "describe_loaded": "load_time", "LoadedTarget": "load_time",
    "Client": "client", "ResolvedPrompt": "client",
    "EvalData": "identity",
    "CompressionSpec": "compression", "build_spec": "compression", "parse_compression": "compression",
    "CtpregError": "errors",
    "embedding_fingerprint": "fingerprint",
    "Candidate": "matcher", "Target": "matcher",
    "BaseModelRecord": "records", "Measurement": "records", "PromptRecord": "records",
    "Resolution": "resolver", "Validator": "resolver", "resolve": "resolver",
    "PublishResult": "service", "Registry": "service",
    "Settings": "settings",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
