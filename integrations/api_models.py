"""The request and response bodies of the registry's HTTP API (``integrations.server``), as pydantic models.

They exist for the contract: FastAPI builds ``/openapi.json`` from them and checks every response against them,
and ``tests/openapi.json`` pins that schema. The values themselves are made by the domain objects' ``to_dict`` /
``registry.wire``, so the CLI's ``--json`` and the API say the same thing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ctpreg.registry.compression import METHODS
from ctpreg.registry.refs import ALIAS_PATTERN, FINGERPRINT_PATTERN, MODEL_PATTERN, REF_PATTERN
from ctpreg.registry.service import MAX_GC_GRACE_SECONDS, MAX_SIZE
from ctpreg.registry.errors import InvalidInput
from ctpreg.registry.tokens import MAX_TOKEN_DAYS, SCOPES, TOKEN_NAME_PATTERN, parse_expiry_time

Method = Literal[tuple(METHODS)]  # type: ignore[valid-type]
Scope = Literal[SCOPES]  # type: ignore[valid-type]
Ref = Field(pattern=REF_PATTERN, max_length=600, description="NAME, NAME:VERSION, NAME@ALIAS or a sha256 prefix")


class Strict(BaseModel):
    """Request bodies: no coercion (``0`` is not ``false``), so what the schema refuses the server refuses too."""

    model_config = ConfigDict(strict=True)


class ErrorDetail(BaseModel):
    type: str = Field(description="The ctpreg error class, e.g. NoCompatiblePrompt")
    message: str
    exit_code: int = Field(description="What the CLI exits with for this error")
    request_id: str = Field(description="The server's log has the detail under this id (also X-Request-ID)")


class ErrorOut(BaseModel):
    error: ErrorDetail


class PromptOut(BaseModel):
    id: int
    name: str
    version: int
    ref: str
    model: str
    model_fingerprint: str
    compression: str
    dataset: str
    task: str | None
    num_virtual_tokens: int
    hidden_size: int
    dtype: str
    sha256: str
    size_bytes: int
    object_key: str
    metrics: dict[str, Any]
    recovery: float | None
    training: dict[str, Any]
    created_at: str
    created_by: str
    deprecated: bool
    aliases: list[str]


class EvalDataOut(Strict):
    corpus: str
    split: str
    seq_len: int
    windows: int
    token_digest: str
    source_sha256: str | None = None
    key: str | None = None


class MeasurementIn(Strict):
    ppl_without: float
    ppl_with: float
    ppl_full: float | None = None
    eval_dataset: str = Field(max_length=256)
    eval_tokens: int = Field(ge=0, le=2**31 - 1)
    target_key: str = Field(max_length=80)
    target_source: str | None = Field(default=None, max_length=1024)
    eval_data: EvalDataOut | None = None


class CandidateOut(BaseModel):
    name: str
    version: int
    ref: str
    sha256: str
    model: str
    compression: str
    dataset: str
    tier: int
    explanation: str
    recovery: float | None
    other_model: bool
    prompt: PromptOut
    measurement: MeasurementIn | None
    ppl_without: float | None = None
    ppl_with: float | None = None
    relative_gain: float | None = None
    eval_dataset: str | None = None
    eval_tokens: int | None = None
    eval_key: str | None = None
    eval_data: EvalDataOut | None = None
    target_key: str | None = None


class ResolutionOut(BaseModel):
    target: str
    served: CandidateOut
    candidates: list[CandidateOut]
    measured: int


class StateOut(BaseModel):
    sha256: str = Field(description="The state's content address, which a prompt's training.state names")


class PublishOut(BaseModel):
    prompt: PromptOut
    created: bool


class ModelOut(BaseModel):
    name: str
    fingerprint: str
    hidden_size: int
    vocab_size: int | None
    architecture: str | None
    source: str | None
    created_at: str | None


class ModelIn(Strict):
    name: str = Field(pattern=MODEL_PATTERN, max_length=128)
    fingerprint: str = Field(pattern=FINGERPRINT_PATTERN)
    hidden_size: int = Field(ge=1, le=MAX_SIZE)
    vocab_size: int | None = Field(default=None, ge=1, le=MAX_SIZE)
    architecture: str | None = Field(default=None, max_length=128)
    source: str | None = Field(default=None, max_length=1024)


class TargetIn(Strict):
    model: str = Field(min_length=1, max_length=256)
    method: Method | None = None
    bits: int | None = None
    sparsity: float | None = None
    group_size: int | None = None
    dataset: str | None = None
    task: str | None = None
    identity: str | None = None
    compression: str | None = None


class EvidenceIn(Strict):
    target: TargetIn
    prompt: str = Field(pattern=REF_PATTERN, max_length=600, description="NAME:VERSION of the prompt measured")
    measurement: MeasurementIn
    accepted: bool


class EvidenceOut(BaseModel):
    prompt_id: int
    prompt_ref: str
    target_model: str
    target_compression: str
    measurement: MeasurementIn
    accepted: bool
    measured_at: str


class AliasIn(Strict):
    ref: str = Ref
    alias: str = Field(pattern=ALIAS_PATTERN)


class RefIn(Strict):
    ref: str = Ref


class GcIn(Strict):
    grace_seconds: float = Field(default=3600.0, ge=0, le=MAX_GC_GRACE_SECONDS)
    dry_run: bool = False
    allow_empty_db: bool = False


class ObjectOut(BaseModel):
    key: str
    size: int
    modified: str


class GcOut(BaseModel):
    dry_run: bool
    objects: list[ObjectOut]


def _expiry(text: str | None) -> str | None:
    """The expiry in UTC, under the cap ``ctpreg tokens create --expires`` has (``tokens.check_expiry``); 422 else."""
    if text is None:
        return None
    try:
        return parse_expiry_time(text).isoformat()
    except InvalidInput as exc:
        raise ValueError(str(exc)) from None


class TokenIn(Strict):
    scope: Scope
    name: str = Field(pattern=TOKEN_NAME_PATTERN)
    expires_at: Annotated[str | None, AfterValidator(_expiry)] = Field(
        default=None, max_length=64, description=f"ISO 8601 with a zone, at most {MAX_TOKEN_DAYS} days ahead; "
        "omitted: never expires")


class TokenOut(BaseModel):
    id: str
    name: str
    scope: str
    state: str
    created_at: str
    created_by: str
    expires_at: str | None
    revoked_at: str | None


class TokenCreatedOut(BaseModel):
    record: TokenOut
    token: str = Field(description="Shown once; only its hash is stored")


class StatusOut(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
