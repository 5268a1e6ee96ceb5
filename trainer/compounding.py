"""Runs that build on published prompts, so CPU-minutes add up across runs (DESIGN §13).

- **Warm start** (``ctpreg train --init auto|REF``): the run starts from another prompt's values, in the same
  embedding space. ``auto`` takes the prompt ``resolve`` would serve for the target, and starts from vocabulary
  embeddings when there is none. A run that does not set ``--num-tokens`` takes the parent's token count; one that
  sets another keeps the parent's first rows, or adds vocabulary-initialised rows after them.
- **Continue** (``ctpreg train --continue REF --steps N``): the run restores the parent's stable-phase state (the
  prompt and AdamW's moments before its decay, ``trainer.stable_state``) and runs to the parent's cumulative steps
  plus N with the parent's settings and data, so it ends where one run of that length would.

Either way the new artifact records its parent (ref and sha256), its cumulative steps and its curve across the
lineage (``registry.lineage``), and a WSD run writes its own stable state beside the artifact for the next one.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ctpreg.registry.artifacts import PromptMetadata
from ctpreg.registry.errors import InvalidInput, NoCompatiblePrompt, NoHelpfulPrompt
from ctpreg.registry.lineage import MAX_SELECT_POINTS, Lineage, downsample
from ctpreg.registry.matcher import Target
from ctpreg.registry.optimizer_state import parse_state
from ctpreg.registry.records import PromptRecord
from ctpreg.registry.resolver import resolve

from .compress import CompressConfig
from .prompt import init_from_vocabulary
from .stable_state import StableState
from .train import TrainConfig, TrainResult

log = logging.getLogger(__name__)
VOCAB, AUTO = "vocab", "auto"


@dataclass(frozen=True, eq=False)
class Origin:
    """Where a run starts: vocabulary embeddings, another prompt's values (``init``), or a published run's
    stable state (``start``); ``parent`` is the prompt it builds on."""

    parent: PromptRecord | None = None
    init: torch.Tensor | None = None
    start: StableState | None = None

    @property
    def label(self) -> str:
        if self.parent is None:
            return VOCAB
        return f"{'continue' if self.start is not None else 'init'}:{self.parent.ref}"

    def lineage(self, config: TrainConfig, result: TrainResult, state: tuple[str, int] | None) -> Lineage:
        """The new prompt's lineage: its parent, cumulative steps, the curve across the lineage, and its own stable
        state (``state``: sha256 and size of the object written beside it)."""
        before = self.parent.lineage if self.parent is not None else Lineage()
        offset = 0 if self.parent is None or self.start is not None else parent_steps(self.parent)
        cut = self.start.step if self.start is not None else None  # the parent's decay is not part of this line
        losses = [p for p in before.loss_curve if cut is None or p[0] <= cut]
        losses += [(offset + result.first_step + i + 1, loss) for i, loss in enumerate(result.losses)]
        checks = [p for p in before.select_curve if cut is None or p[0] < cut]
        checks += [(offset + entry["step"], float(entry["select_ppl"])) for entry in result.history]
        return Lineage(
            parent_ref=self.parent.ref if self.parent is not None else None,
            parent_sha256=self.parent.sha256 if self.parent is not None else None,
            steps_total=offset + config.steps,
            state_sha256=state[0] if state else None, state_size=state[1] if state else None,
            loss_curve=tuple(downsample(losses)), select_curve=tuple(checks[-MAX_SELECT_POINTS:]),
        )


def parent_steps(parent: PromptRecord) -> int:
    """Optimizer steps behind a prompt: its recorded cumulative steps, or its own run's for older prompts."""
    steps = parent.lineage.steps_total or parent.training.get("steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else 0


def warm_start(choice: str, *, registry: Any, client: Any, target: Target, fingerprint: str,
               num_tokens: int | None, model: nn.Module, seed: int) -> Origin:
    """The origin ``--init`` names: ``vocab``, ``auto`` (resolve's choice for ``target``, else vocab) or a REF."""
    if choice == VOCAB:
        return Origin()
    if choice == AUTO:
        try:
            ref = resolve(registry, target).served.prompt.ref
        except (NoCompatiblePrompt, NoHelpfulPrompt):
            log.info("--init auto: no prompt in the registry for %s; starting from vocabulary embeddings",
                     target.describe())
            return Origin()
    else:
        ref = choice
    prompt = client.fetch(ref)
    if prompt.record.model_fingerprint != fingerprint:
        raise InvalidInput(f"--init {ref}: that prompt belongs to another embedding space than this model's")
    rows = torch.from_numpy(prompt.numpy().astype("float32"))
    count = num_tokens or rows.shape[0]
    log.info("warm start from %s (%d virtual tokens%s)", prompt.record.ref, rows.shape[0],
             "" if count == rows.shape[0] else f", {'first ' if count < rows.shape[0] else ''}{count} used")
    return Origin(parent=prompt.record, init=fit_rows(rows, count, model, seed))


def fit_rows(rows: torch.Tensor, count: int, model: nn.Module, seed: int) -> torch.Tensor:
    """``count`` rows: the first of ``rows``, then vocabulary-initialised ones if more are asked for."""
    if count <= rows.shape[0]:
        return rows[:count].clone()
    extra = init_from_vocabulary(model, count - rows.shape[0], seed=seed).to(rows.dtype)
    return torch.cat([rows, extra.cpu()])


@dataclass(frozen=True)
class Continuation:
    """What a ``--continue`` run needs from its parent: where it starts and the parent's own settings."""

    origin: Origin
    metadata: PromptMetadata
    train_config: TrainConfig
    compress_configs: list[CompressConfig]
    seq_len: int
    eval_windows: int


def continuation(ref: str, steps: int, *, registry: Any, client: Any) -> Continuation:
    """The parent ``ref`` names, its stable state (verified) and its settings, to run ``steps`` more steps."""
    prompt = client.fetch(ref)
    record, meta = prompt.record, prompt.metadata
    lineage = meta.lineage
    if lineage.state_sha256 is None:
        raise InvalidInput(f"{record.ref} has no optimizer state to continue from (trained before lineage was "
                           f"recorded, or with a cosine schedule); warm-start from it instead: --init {record.ref}")
    arrays, state_meta = parse_state(registry.fetch_state(lineage.state_sha256), source=f"state of {record.ref}")
    start = StableState.from_arrays(arrays, state_meta)
    training = meta.training
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    total = parent_steps(record) + steps
    try:
        config = TrainConfig(**{**{k: v for k, v in training.items() if k in known}, "steps": total})
    except TypeError as exc:
        raise InvalidInput(f"{record.ref}: its training settings cannot be read back ({exc})") from None
    calibration = training.get("calibration")
    configs = [CompressConfig(spec=spec, **({"calibration": calibration,
                                             "calibration_windows": training["calibration_windows"]}
                                            if calibration else {}))
               for spec in meta.trained_on]
    counts = [_windows(meta.metrics.get("eval_data")), _windows(training.get("select_data"))]
    if not isinstance(training.get("seq_len"), int) or None in counts:
        raise InvalidInput(f"{record.ref}: its artifact does not record the windows it was trained and measured on")
    return Continuation(Origin(parent=record, start=start), meta, config, configs, training["seq_len"], max(counts))


def _windows(data: object) -> int | None:
    """The window count an ``EvalData`` dict records (the cap that reproduces the split's windows)."""
    count = data.get("windows") if isinstance(data, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else None
