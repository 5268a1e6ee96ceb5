"""The JSON shapes the HTTP API speaks, both ways: what ``ctpreg serve`` sends and what ``RemoteRegistry`` reads back.

Each domain object is written with the ``to_dict`` it already has (so ``--json`` output and the API agree) and read
back into the same frozen dataclass, so a client over HTTP ranks, validates and caches exactly as one with direct
access: one code path for the semantics, with the wire as a thin layer.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any

from .errors import InvalidInput
from .identity import EvalData
from .matcher import Candidate, Target
from .records import BaseModelRecord, Evidence, Measurement, PromptRecord
from .tokens import TokenRecord

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


def measurement_from_wire(data: dict[str, Any]) -> Measurement:
    try:
        eval_data = data.get("eval_data")
        return Measurement(
            ppl_without=float(data["ppl_without"]), ppl_with=float(data["ppl_with"]),
            ppl_full=None if data.get("ppl_full") is None else float(data["ppl_full"]),
            eval_dataset=str(data["eval_dataset"]), eval_tokens=int(data["eval_tokens"]),
            target_key=str(data["target_key"]), target_source=data.get("target_source"),
            eval_data=EvalData.from_dict(eval_data) if eval_data is not None else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"malformed measurement: {exc}") from None


def candidate_to_wire(c: Candidate) -> dict[str, Any]:
    """``Candidate.to_dict`` (the CLI's ``--json`` row) plus what rebuilds the candidate: the full record."""
    return {
        **c.to_dict(), "other_model": c.other_model, "prompt": c.prompt.to_dict(),
        "measurement": measurement_to_wire(c.measurement) if c.measurement is not None else None,
    }


def candidate_from_wire(data: dict[str, Any]) -> Candidate:
    measurement = data.get("measurement")
    return Candidate(
        prompt=PromptRecord.from_dict(data["prompt"]), tier=int(data["tier"]), explanation=str(data["explanation"]),
        other_model=bool(data.get("other_model")),
        measurement=measurement_from_wire(measurement) if measurement is not None else None,
    )


def evidence_to_wire(e: Evidence) -> dict[str, Any]:
    return {
        "prompt_id": e.prompt_id, "prompt_ref": e.prompt_ref, "target_model": e.target_model,
        "target_compression": e.target_compression, "measurement": measurement_to_wire(e.measurement),
        "accepted": e.accepted, "measured_at": e.measured_at.isoformat(),
    }


def evidence_from_wire(data: dict[str, Any]) -> Evidence:
    return Evidence(
        prompt_id=int(data["prompt_id"]), prompt_ref=str(data["prompt_ref"]), target_model=str(data["target_model"]),
        target_compression=str(data["target_compression"]), measurement=measurement_from_wire(data["measurement"]),
        accepted=bool(data["accepted"]), measured_at=datetime.fromisoformat(data["measured_at"]),
    )


def model_from_wire(data: dict[str, Any]) -> BaseModelRecord:
    created = data.get("created_at")
    return BaseModelRecord(
        name=data["name"], fingerprint=data["fingerprint"], hidden_size=int(data["hidden_size"]),
        vocab_size=data.get("vocab_size"), architecture=data.get("architecture"), source=data.get("source"),
        created_at=datetime.fromisoformat(created) if created else None,
    )


def token_from_wire(data: dict[str, Any]) -> TokenRecord:
    def moment(key: str) -> datetime | None:
        return datetime.fromisoformat(data[key]) if data.get(key) else None

    return TokenRecord(
        public_id=data["id"], name=data["name"], scope=data["scope"], created_at=datetime.fromisoformat(
            data["created_at"]), created_by=data["created_by"], expires_at=moment("expires_at"),
        revoked_at=moment("revoked_at"),
    )
