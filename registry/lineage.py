"""A prompt's lineage, recorded in its artifact's ``training`` JSON so the artifact stays self-describing (DESIGN §13).

Training compounds across runs: a prompt may start from another one (``--init``) or continue one (``--continue``),
so its record says where it came from and how much compute is behind it:

- ``parent``: ``{"ref": "NAME:VERSION", "sha256": ...}``, the prompt it was warm-started from or continued;
- ``steps_total``: optimizer steps in the whole lineage up to this prompt's last step;
- ``state``: ``{"sha256": ..., "size_bytes": ...}``, the optimizer state at the end of the run's stable phase
  (``registry.optimizer_state``), a second content-addressed object a ``--continue`` starts from; gc keeps it
  while a prompt names it;
- ``curve``: ``{"loss": [[step, loss], ...], "select": [[step, ppl], ...]}`` by cumulative step across the lineage:
  training loss (at most ``MAX_LOSS_POINTS``, averaged over equal spans) and every select-split check.

Every field is optional: prompts trained from scratch before lineage existed have none.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidInput
from .record_checks import Fields, check_sha256
from .refs import parse_ref

STATE_PREFIX = "states/"
MAX_STEPS = 10**9
MAX_LOSS_POINTS = 200
MAX_SELECT_POINTS = 2000
MAX_STATE_BYTES = 1 << 30


def state_beside(artifact: Path) -> Path:
    """Where ``ctpreg train -o P.safetensors`` writes the run's optimizer state: ``P.state.safetensors``."""
    return artifact.with_name(f"{artifact.name.removesuffix('.safetensors')}.state.safetensors")


def read_state_beside(artifact: Path, lineage: Lineage) -> bytes | None:
    """The optimizer state an artifact names, from the file beside it, when that file is there; it must be the
    object named (its sha256), else ``InvalidInput``. None when the artifact names none or the file is absent (the
    registry may hold it already)."""
    if lineage.state_sha256 is None:
        return None
    path = state_beside(artifact)
    try:
        if path.stat().st_size > MAX_STATE_BYTES:
            raise InvalidInput(f"{path}: larger than {MAX_STATE_BYTES} bytes; not an optimizer state")
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
    if hashlib.sha256(data).hexdigest() != lineage.state_sha256:
        raise InvalidInput(f"{path} is not the optimizer state {artifact.name} names (sha256 differs)")
    return data


def state_key(sha256: str) -> str:
    """Where an optimizer state object lives in the store, beside (not among) the prompts."""
    return f"{STATE_PREFIX}{sha256[:2]}/{check_sha256(sha256)}.safetensors"


@dataclass(frozen=True)
class Lineage:
    parent_ref: str | None = None
    parent_sha256: str | None = None
    steps_total: int | None = None
    state_sha256: str | None = None
    state_size: int | None = None
    loss_curve: tuple[tuple[int, float], ...] = ()
    select_curve: tuple[tuple[int, float], ...] = ()

    @classmethod
    def from_training(cls, training: dict[str, Any]) -> Lineage:
        """The lineage a ``training`` JSON records, every field checked (``InvalidInput`` names the first bad one)."""
        fields = Fields(training, "training")
        parent = fields.nested("parent", optional=True)
        state = fields.nested("state", optional=True)
        curve = fields.nested("curve", optional=True)
        parent_ref = parent.text("ref", max_chars=600) if parent is not None else None
        if parent_ref is not None:
            ref = parse_ref(parent_ref)
            if ref.version is None:
                raise InvalidInput("training.parent.ref must name a version (NAME:VERSION)")
        return cls(
            parent_ref=parent_ref,
            parent_sha256=parent.checked("sha256", check_sha256) if parent is not None else None,
            steps_total=fields.integer("steps_total", 1, MAX_STEPS, optional=True),
            state_sha256=state.checked("sha256", check_sha256) if state is not None else None,
            state_size=state.integer("size_bytes", 1, MAX_STATE_BYTES) if state is not None else None,
            loss_curve=_points(curve, "loss", MAX_LOSS_POINTS) if curve is not None else (),
            select_curve=_points(curve, "select", MAX_SELECT_POINTS) if curve is not None else (),
        )

    def to_training(self) -> dict[str, Any]:
        """The fields to merge into a ``training`` JSON (only those set)."""
        out: dict[str, Any] = {}
        if self.parent_ref is not None:
            out["parent"] = {"ref": self.parent_ref, "sha256": self.parent_sha256}
        if self.steps_total is not None:
            out["steps_total"] = self.steps_total
        if self.state_sha256 is not None:
            out["state"] = {"sha256": self.state_sha256, "size_bytes": self.state_size}
        if self.loss_curve or self.select_curve:
            out["curve"] = {"loss": [list(p) for p in self.loss_curve], "select": [list(p) for p in self.select_curve]}
        return out


def _points(curve: Fields, key: str, limit: int) -> tuple[tuple[int, float], ...]:
    points = []
    for item in curve.items(key, max_items=limit):
        if (not isinstance(item, list) or len(item) != 2 or isinstance(item[0], bool) or not isinstance(item[0], int)
                or not 0 <= item[0] <= MAX_STEPS or isinstance(item[1], bool) or not isinstance(item[1], int | float)
                or not math.isfinite(item[1])):
            raise InvalidInput(f"training.curve.{key} must hold [step, value] pairs of finite numbers")
        points.append((item[0], float(item[1])))
    if any(b[0] < a[0] for a, b in zip(points, points[1:])):
        raise InvalidInput(f"training.curve.{key} must be in step order")
    return tuple(points)


def downsample(losses: list[tuple[int, float]], limit: int = MAX_LOSS_POINTS) -> list[tuple[int, float]]:
    """At most ``limit`` points: consecutive losses averaged over equal spans, each at its span's last step."""
    if len(losses) <= limit:
        return list(losses)
    size = math.ceil(len(losses) / limit)
    spans = [losses[i : i + size] for i in range(0, len(losses), size)]
    return [(span[-1][0], sum(value for _, value in span) / len(span)) for span in spans]
