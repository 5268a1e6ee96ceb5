"""ORM rows of the metadata DB (DESIGN §5). Domain objects live in ``registry.records``; rows never leave ``db``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, ForeignKey, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _timestamp() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class BaseModelRow(SQLModel, table=True):
    """A base model: its slug and the fingerprint of its embedding space (shared by a compatibility class)."""

    __tablename__ = "base_model"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128, unique=True)
    fingerprint: str = Field(max_length=71, index=True)
    architecture: str | None = Field(default=None, max_length=128)
    hidden_size: int
    vocab_size: int | None = None
    source: str | None = Field(default=None, max_length=1024)
    created_at: datetime = _timestamp()


class _RankedColumns(SQLModel):
    """The columns resolve ranks by, shared by a prompt and each compression it was trained on."""

    name: str = Field(max_length=512)
    version: int
    compression: str = Field(max_length=128)
    method: str = Field(max_length=32)
    bits: int | None = None
    sparsity: float | None = None
    group_size: int | None = None
    dataset: str = Field(max_length=256)
    task: str | None = Field(default=None, max_length=256)
    recovery: float | None = None  # gap recovered per the recorded figures, a column so resolve ranks in SQL
    deprecated: bool = False


class PromptRow(_RankedColumns, table=True):
    """One immutable prompt version; its bytes live in the object store under ``object_key``."""

    __tablename__ = "prompt"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_prompt_name_version"),
        UniqueConstraint("name", "sha256", name="uq_prompt_name_sha256"),
        Index("ix_prompt_model_method_bits", "base_model_id", "method", "bits"),
    )

    id: int | None = Field(default=None, primary_key=True)
    base_model_id: int = Field(sa_column=Column(Integer, ForeignKey("base_model.id"), nullable=False))
    num_virtual_tokens: int
    hidden_size: int
    dtype: str = Field(max_length=16)
    sha256: str = Field(max_length=64, index=True)
    size_bytes: int
    object_key: str = Field(max_length=256)
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    training: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _timestamp()
    created_by: str = Field(max_length=128)


class PromptTargetRow(_RankedColumns, table=True):
    """One compression a prompt was trained on, with its recorded recovery there: the rows resolve ranks.

    A single-target prompt has one row (its own compression); a multi-target prompt one per target, so for each
    listed target it ranks as an exact match by its recovery on that very target (DESIGN §12). The prompt's ranking
    columns (model, dataset, task, version, name, deprecated) are copied in so that the ranking reads this table's
    index alone; ``deprecated`` is updated with the prompt's.
    """

    __tablename__ = "prompt_target"
    __table_args__ = (
        UniqueConstraint("prompt_id", "compression", name="uq_prompt_target"),
        Index(
            "ix_prompt_target_rank", "base_model_id", "method", "bits", "deprecated", "sparsity", "group_size",
            "dataset", "task", "recovery", "version", "name", "prompt_id",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    prompt_id: int = Field(sa_column=Column(Integer, ForeignKey("prompt.id"), nullable=False, index=True))
    base_model_id: int = Field(sa_column=Column(Integer, ForeignKey("base_model.id"), nullable=False))


class AliasRow(SQLModel, table=True):
    """A movable pointer ``name@alias`` → prompt version; ``latest`` moves on every publish."""

    __tablename__ = "alias"

    name: str = Field(max_length=512, primary_key=True)
    alias: str = Field(max_length=64, primary_key=True)
    prompt_id: int = Field(sa_column=Column(Integer, ForeignKey("prompt.id"), nullable=False))
    updated_at: datetime = _timestamp()


class TransferResultRow(SQLModel, table=True):
    """Evidence: a prompt measured on a target with and without it, naming the target and the windows measured.

    ``target_key`` / ``eval_key`` follow ``registry.identity``; rows from before targets were identified carry
    ``legacy`` and ``legacy:<eval_dataset>``.
    """

    __tablename__ = "transfer_result"
    __table_args__ = (Index("ix_transfer_target", "target_model_id", "target_compression", "target_key"),)

    id: int | None = Field(default=None, primary_key=True)
    prompt_id: int = Field(sa_column=Column(Integer, ForeignKey("prompt.id"), nullable=False, index=True))
    target_model_id: int = Field(sa_column=Column(Integer, ForeignKey("base_model.id"), nullable=False))
    target_compression: str = Field(max_length=128)
    eval_dataset: str = Field(max_length=256)
    eval_tokens: int
    ppl_without: float
    ppl_with: float
    ppl_full: float | None = None
    relative_gain: float
    accepted: bool
    measured_at: datetime = _timestamp()
    target_key: str = Field(default="legacy", max_length=80)
    target_source: str | None = Field(default=None, max_length=1024)
    eval_key: str = Field(max_length=300)
    eval_data: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class ApiTokenRow(SQLModel, table=True):
    """An API token of ``ctpreg serve``: only the sha256 of its secret is stored, never the secret itself."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    public_id: str = Field(max_length=32, unique=True)  # the token's non-secret part, to find its row
    secret_sha256: str = Field(max_length=64)
    name: str = Field(max_length=128)
    scope: str = Field(max_length=16)
    created_at: datetime = _timestamp()
    created_by: str = Field(max_length=128)
    expires_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
