"""The JSON shapes the HTTP API speaks, both ways: what ``ctpreg serve`` sends and what ``RemoteRegistry`` reads back.

Each domain object is written with the ``to_dict`` it already has (so ``--json`` output and the API agree) and read
back into the same frozen dataclass, so a client over HTTP ranks, validates and caches exactly as one with direct
access: one code path for the semantics, with the wire as a thin layer. Reading is strict (``record_checks``):
an answer is hostile input until every field the client keeps has been checked.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .errors import InvalidInput
from .identity import EvalData
from .matcher import Candidate, Target
from .rank_rules import MEASURED, REJECTED
from .record_checks import MAX_ID, Fields, check_sha256
from .records import BaseModelRecord, Evidence, Measurement, PromptRecord, canonical_compression
from .refs import check_fingerprint, check_model_name, check_text
from .tokens import TokenRecord, check_public_id, check_scope, check_token_name

MAX_COUNT = 2**31 - 1  # token counts, sizes and window counts: what every integer column holds

_TARGET_FIELDS = tuple(f.name for f in fields(Target))


def target_to_wire(target: Target) -> dict[str, Any]:
    return {name: getattr(target, name) for name in _TARGET_FIELDS if getattr(target, name) is not None}


def target_from_wire(data: dict[str, Any]) -> Target:
    """A target from request data; unknown keys are refused, and ``Target`` checks every value."""
    if not isinstance(data, dict) or "model" not in data:
        raise InvalidInput("a target needs at least its model")
    unknown = set(data) - set(_TARGET_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown target fields {sorted(unknown)}")
    return Target(**data)


def measurement_to_wire(m: Measurement) -> dict[str, Any]:
    return {
        "ppl_without": m.ppl_without, "ppl_with": m.ppl_with, "ppl_full": m.ppl_full, "eval_dataset": m.eval_dataset,
        "eval_tokens": m.eval_tokens, "target_key": m.target_key, "target_source": m.target_source,
        "eval_data": m.eval_data.to_dict() if m.eval_data is not None else None,
    }


def measurement_from_wire(data: object, what: str = "measurement") -> Measurement:
    fields = Fields(data, what)
    windows = fields.nested("eval_data", optional=True)
    return Measurement(
        ppl_without=fields.number("ppl_without", positive=True), ppl_with=fields.number("ppl_with", positive=True),
        ppl_full=fields.number("ppl_full", positive=True, optional=True),
        eval_dataset=fields.checked("eval_dataset", lambda v: check_text(v, "eval_dataset")),
        eval_tokens=fields.integer("eval_tokens", 0, MAX_COUNT), target_key=fields.text("target_key", max_chars=80),
        target_source=fields.text("target_source", max_chars=1024, optional=True),
        eval_data=_eval_data(windows) if windows is not None else None,
    )


def _eval_data(fields: Fields) -> EvalData:
    return EvalData(
        corpus=fields.text("corpus", max_chars=1024), split=fields.text("split", max_chars=64),
        seq_len=fields.integer("seq_len", 1, MAX_COUNT), windows=fields.integer("windows", 0, MAX_COUNT),
        token_digest=fields.text("token_digest", max_chars=128),
        source_sha256=fields.checked("source_sha256", check_sha256, optional=True),
    )


def candidate_to_wire(c: Candidate) -> dict[str, Any]:
    """``Candidate.to_dict`` (the CLI's ``--json`` row) plus what rebuilds the candidate: the full record."""
    return {
        **c.to_dict(), "other_model": c.other_model, "prompt": c.prompt.to_dict(),
        "measurement": measurement_to_wire(c.measurement) if c.measurement is not None else None,
    }


def candidate_from_wire(data: object) -> Candidate:
    fields = Fields(data, "candidate")
    measurement = fields.nested("measurement", optional=True)
    return Candidate(
        prompt=PromptRecord.from_dict(fields.data.get("prompt"), "candidate.prompt"),
        tier=fields.integer("tier", MEASURED, REJECTED), explanation=fields.text("explanation"),
        other_model=bool(fields.boolean("other_model", optional=True)),
        measurement=measurement_from_wire(measurement.data, measurement.what) if measurement is not None else None,
    )


def evidence_to_wire(e: Evidence) -> dict[str, Any]:
    return {
        "prompt_id": e.prompt_id, "prompt_ref": e.prompt_ref, "target_model": e.target_model,
        "target_compression": e.target_compression, "measurement": measurement_to_wire(e.measurement),
        "accepted": e.accepted, "measured_at": e.measured_at.isoformat(),
    }


def evidence_from_wire(data: object) -> Evidence:
    fields = Fields(data, "evidence")
    return Evidence(
        prompt_id=fields.integer("prompt_id", 0, MAX_ID), prompt_ref=fields.text("prompt_ref", max_chars=600),
        target_model=fields.checked("target_model", lambda v: check_text(v, "target_model")),
        target_compression=fields.checked("target_compression", canonical_compression),
        measurement=measurement_from_wire(fields.data.get("measurement"), "evidence.measurement"),
        accepted=fields.boolean("accepted"), measured_at=fields.moment("measured_at"),
    )


def model_from_wire(data: object) -> BaseModelRecord:
    fields = Fields(data, "model")
    return BaseModelRecord(
        name=fields.checked("name", check_model_name), fingerprint=fields.checked("fingerprint", check_fingerprint),
        hidden_size=fields.integer("hidden_size", 1, MAX_COUNT),
        vocab_size=fields.integer("vocab_size", 1, MAX_COUNT, optional=True),
        architecture=fields.text("architecture", max_chars=128, optional=True),
        source=fields.text("source", max_chars=1024, optional=True),
        created_at=fields.moment("created_at", optional=True),
    )


def token_from_wire(data: object) -> TokenRecord:
    fields = Fields(data, "token")
    return TokenRecord(
        public_id=fields.checked("id", check_public_id), name=fields.checked("name", check_token_name),
        scope=fields.checked("scope", check_scope), created_at=fields.moment("created_at"),
        created_by=fields.text("created_by"), expires_at=fields.moment("expires_at", optional=True),
        revoked_at=fields.moment("revoked_at", optional=True),
    )
