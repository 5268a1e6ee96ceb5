"""ctpreg's registry: prompt artifacts, metadata DB, object stores, matcher and the load-time client.

Torch-free at import time, so inference fleets and CI jobs can resolve and fetch prompts cheaply.
"""

from .artifacts import PromptArtifact, PromptMetadata, parse_artifact, read_artifact, write_artifact
from .client import Client, ResolvedPrompt
from .compression import CompressionSpec, build_spec, parse_compression
from .errors import CtpregError
from .fingerprint import embedding_fingerprint
from .matcher import Candidate, Target
from .records import BaseModelRecord, Measurement, PromptRecord
from .resolver import Resolution, Validator, resolve
from .service import PublishResult, Registry
from .settings import Settings

__all__ = [
    "BaseModelRecord", "Candidate", "Client", "CompressionSpec", "CtpregError", "Measurement", "PromptArtifact",
    "PromptMetadata", "PromptRecord", "PublishResult", "Registry", "Resolution", "ResolvedPrompt", "Settings",
    "Target", "Validator", "build_spec", "embedding_fingerprint", "parse_artifact", "parse_compression",
    "read_artifact", "resolve", "write_artifact",
]
