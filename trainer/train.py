"""Soft-prompt training loop (nanoGPT shape: config at the top, ``get_batch`` / ``get_lr``, one loop in a fixed order).

Every model weight is frozen; the prompt is the only parameter the optimizer sees, so no optimizer state exists for
the model. AdamW with linear warmup then warmup–stable–decay (or cosine) learning rates, gradient clipping, and every
``eval_every`` steps a perplexity on the ``select`` split; the prompt that is best there is kept. The ``test`` split
is never seen here. Checkpoints are safetensors (prompt, best prompt, Adam moments, the stable-phase state once
taken) plus JSON in the header, never pickle; ``resume`` continues exactly where a checkpoint left off.

Training compounds across runs: a WSD run hands back its ``StableState`` (the prompt and AdamW's state before the
decay), which a later run continues from (``start``) for more steps, and a new prompt may start from an existing one
(``init``) instead of vocabulary embeddings.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctpreg.registry.errors import InvalidInput

from .data import TokenWindows
from .distributed import average_gradient, is_main, rank_and_world
from .evaluate import perplexity
from .fast_steps import FastSteps
from .models import bf16_native
from .progress import progress
from .prompt import init_from_vocabulary, prompt_loss
from .stable_state import Snapshot, StableState
from .train_config import NOT_TRAJECTORY, TrainConfig

log = logging.getLogger(__name__)
@dataclass
class TrainResult:
    """``prompt`` is the best on select, ``final_prompt`` where training ended; ``losses[i]`` is the training loss
    of step ``first_step + i`` (this run's steps: from 0, or from the state it continued)."""

    prompt: torch.Tensor
    final_prompt: torch.Tensor
    best_select_ppl: float
    best_step: int
    initial_select_ppl: float
    history: list[dict[str, Any]]
    losses: list[float]
    first_step: int
    stable_state: StableState | None
    step_seconds: float
    tokens_per_second: float


def stable_end(config: TrainConfig) -> int:
    """The first step of a WSD run's decay; the steps before it do not depend on ``config.steps``."""
    return config.steps - round(config.decay_fraction * config.steps)


def get_lr(step: int, config: TrainConfig) -> float:
    """Linear warmup, then either warmup–stable–decay or cosine decay down to ``lr * min_lr_ratio``.

    WSD keeps the lr constant until ``stable_end`` and then decays with the 1-sqrt shape, which Hägele et al. 2024
    ("Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations", arXiv:2405.18392) found to match
    cosine with a decay of ~20% of the steps and to beat a linear decay. The decay reaches its floor at the last step.
    """
    if config.lr_schedule == "wsd":
        warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        end = stable_end(config)
        if step < end:
            return config.lr * warm
        fraction = min(1.0, (step + 1 - end) / max(1, config.steps - end))
        return config.lr * warm * (config.min_lr_ratio + (1 - config.min_lr_ratio) * (1 - math.sqrt(fraction)))
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress_fraction = min(1.0, (step - config.warmup_steps) / span)
    cosine = 0.5 * (1 + math.cos(math.pi * progress_fraction))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def get_batch(windows: torch.Tensor, step: int, config: TrainConfig) -> torch.Tensor:
    """This rank's windows for ``step``: a per-epoch permutation, the same on every rank, sliced by rank."""
    rank, world = rank_and_world()
    per_step = config.batch_size * world
    epoch, offset = divmod(step * per_step, windows.shape[0])
    order = torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
    index = torch.cat([order, order])[offset : offset + per_step]  # wraps at the epoch end
    return windows[index[rank * config.batch_size : (rank + 1) * config.batch_size]]


def check_continuation(config: TrainConfig, step: int) -> None:
    """A run may continue a state taken at ``step`` only if it runs past it and its own stable phase reaches it:
    then its learning rates before ``step`` are those the state was trained with."""
    if config.steps <= step:
        raise InvalidInput(f"steps must exceed the state's step {step}, got {config.steps}")
    end = stable_end(config)
    if end < step:
        least = next(n for n in itertools.count(step + 1) if n - round(config.decay_fraction * n) >= step)
        raise InvalidInput(
            f"with {config.steps} steps the decay would start at step {end}, before the state's step {step}: "
            f"give at least {least} steps (or a smaller decay_fraction)"
        )


def uses_autocast(config: TrainConfig, device: torch.device) -> bool:
    return config.autocast_bf16 and bf16_native(device)


def _autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if uses_autocast(config, device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_prompt(
    model: nn.Module | Sequence[nn.Module],
    windows: TokenWindows,
    config: TrainConfig,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    context: str = "",
    teacher: nn.Module | None = None,
    init: torch.Tensor | None = None,
    start: StableState | None = None,
) -> TrainResult:
    """Learn a prompt for the frozen ``model`` on ``windows.train``, keeping the best by perplexity on ``select``.

    Several models (compressed versions of one base model) learn one prompt: each step trains on one of them in turn
    (``schedule=cycle``) or on all (``sum``, their mean loss), and the best step is the one whose geometric mean of
    select perplexities over the models is lowest. ``context`` names what the model is (source, fingerprint,
    compression, calibration); a checkpoint only resumes under the same context, config, data and starting point.
    ``teacher`` (the uncompressed model, frozen) is needed by the kd losses.

    ``init`` ([num_tokens, hidden]) starts from that prompt instead of vocabulary embeddings. ``start`` continues a
    WSD run from its stable-phase state: steps ``start.step .. config.steps - 1`` run with the same batches and
    learning rates as one run of ``config.steps`` would, so it ends the same (bitwise on one machine and thread
    count). A WSD run returns its own state at ``stable_end`` in ``TrainResult.stable_state``.
    """
    models = [model] if isinstance(model, nn.Module) else list(model)
    embeddings = models[0].get_input_embeddings().weight
    device, shape = embeddings.device, (config.num_tokens, int(embeddings.shape[1]))
    if any(p.requires_grad for m in models for p in m.parameters()):
        raise InvalidInput("the model must be frozen before prompt training (trainer.models.freeze)")
    if config.needs_teacher and teacher is None:
        raise InvalidInput(f"loss {config.loss} needs the uncompressed model as teacher")
    if init is not None and start is not None:
        raise InvalidInput("give an initial prompt or a state to continue, not both")
    if init is not None:
        _check_init(init, shape)
    if start is not None:
        _check_start(start, config, shape, windows, context)
    first = init.detach().float() if init is not None else init_from_vocabulary(models[0], config.num_tokens,
                                                                                 seed=config.seed)
    prompt = nn.Parameter(first.to(device, copy=True))
    optimizer = torch.optim.AdamW([prompt], lr=config.lr, weight_decay=config.weight_decay)
    select = windows.select[: config.eval_windows] if config.eval_windows else windows.select
    origin = _origin(init, start)
    if resume and checkpoint is not None and checkpoint.is_file():
        state = _load_checkpoint(checkpoint, prompt, optimizer, config, windows, context, origin)
        log.info("resumed from %s at step %d", checkpoint, state.step)
    else:
        if start is not None:
            start.snapshot.restore(prompt, optimizer)
        state = _TrainState(best=prompt.detach().clone(), step=start.step if start is not None else 0)
    first_step = state.step - len(state.losses)
    end = stable_end(config) if config.lr_schedule == "wsd" else None

    def evaluate(step: int) -> float:
        ppls = [
            perplexity(m, select, prompt=prompt.detach(), batch_size=config.eval_batch_size, label="select").ppl
            for m in models
        ]
        ppl = math.exp(sum(map(math.log, ppls)) / len(ppls))
        state.history.append({"step": step, "select_ppl": ppl, **({"select_ppls": ppls} if len(ppls) > 1 else {})})
        if ppl < state.best_ppl:
            state.best_ppl, state.best_step, state.best = ppl, step, prompt.detach().clone()
        return ppl

    def before_step(step: int) -> None:
        """What is due before ``step`` runs (or, for ``config.steps``, after the last): the stable-phase state,
        then a select check and a checkpoint."""
        if step == end:
            state.stable = StableState(Snapshot.capture(prompt, optimizer), step, config.trajectory_digest,
                                       windows.data_hash, context)
        if (step % config.eval_every == 0 or step == config.steps) and state.history[-1]["step"] != step:
            evaluate(step)
            if checkpoint is not None:
                _save_checkpoint(checkpoint, prompt, optimizer, config, windows, state, step, context, origin)

    if not state.history:
        state.initial_ppl = evaluate(state.step)
    fast = FastSteps([*models, *([teacher] if teacher is not None else [])], batch=config.batch_size,
                     tokens=config.num_tokens + windows.seq_len) if uses_autocast(config, device) else None
    tokens_per_step = config.batch_size * rank_and_world()[1] * (windows.seq_len - 1)
    bar = progress(range(state.step, config.steps), desc="train", unit="step", initial=state.step, total=config.steps)
    training_seconds, steps_run = 0.0, 0
    for step in bar:
        before_step(step)
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step, config)
        batch = get_batch(windows.train, step, config).to(device)
        trained = models if config.schedule == "sum" else [models[step % len(models)]]
        with fast.active() if fast is not None else contextlib.nullcontext():
            with _autocast(config, device):
                loss = sum(prompt_loss(m, batch, prompt, loss=config.loss, teacher=teacher) for m in trained)
                loss = loss / len(trained)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        average_gradient(prompt)
        torch.nn.utils.clip_grad_norm_([prompt], config.grad_clip)
        optimizer.step()
        state.losses.append(float(loss.detach()))
        training_seconds += time.perf_counter() - started
        steps_run += 1
        state.step = step + 1
        if state.step == config.steps:
            before_step(config.steps)  # the final check, so the bar's last line includes it
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{state.losses[-1]:.3f}", select_ppl=f"{state.history[-1]['select_ppl']:.2f}",
                            best=f"{state.best_ppl:.2f}")
    step_seconds = training_seconds / steps_run if steps_run else float("nan")
    return TrainResult(
        prompt=state.best.cpu(), final_prompt=prompt.detach().cpu().clone(), best_select_ppl=state.best_ppl,
        best_step=state.best_step, initial_select_ppl=state.initial_ppl, history=state.history, losses=state.losses,
        first_step=first_step, stable_state=state.stable, step_seconds=step_seconds,
        tokens_per_second=tokens_per_step / step_seconds if steps_run else float("nan"),
    )


def _check_init(init: torch.Tensor, shape: tuple[int, int]) -> None:
    if tuple(init.shape) != shape:
        raise InvalidInput(f"the initial prompt is {list(init.shape)}; this run trains {list(shape)}")
    if not torch.isfinite(init).all():
        raise InvalidInput("the initial prompt holds NaN or Inf")


def _check_start(start: StableState, config: TrainConfig, shape: tuple[int, int], windows: TokenWindows,
                 context: str) -> None:
    """Refuse a state this run cannot continue exactly, saying which part differs."""
    if config.lr_schedule != "wsd":
        raise InvalidInput("continuing needs lr_schedule wsd: a cosine run's learning rates depend on its length")
    held = tuple(start.snapshot.prompt.shape)
    if held != shape:
        raise InvalidInput(f"the optimizer state holds a {list(held)} prompt; this run trains {list(shape)}")
    if start.config_digest != config.trajectory_digest:
        raise InvalidInput(
            "the optimizer state was made under another training config: only "
            f"{', '.join(NOT_TRAJECTORY)} may change when continuing"
        )
    if start.data_hash != windows.data_hash:
        raise InvalidInput(
            f"the optimizer state was trained on other data ({start.data_hash[:12]}…, this run "
            f"{windows.data_hash[:12]}…): continue on the same corpus, seq_len and window caps"
        )
    if start.context != context:
        raise InvalidInput(f"the optimizer state belongs to {start.context or 'another model'}, not {context}")
    check_continuation(config, start.step)


def _origin(init: torch.Tensor | None, start: StableState | None) -> str:
    """Names the starting point, so a checkpoint never resumes a run that started elsewhere."""
    if start is not None:
        arrays, meta = start.to_arrays()
        digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
        for value in arrays.values():
            digest.update(value.tobytes())
        return f"state {digest.hexdigest()}"
    if init is not None:
        return f"init {hashlib.sha256(init.detach().float().cpu().numpy().tobytes()).hexdigest()}"
    return "vocabulary"


@dataclass
class _TrainState:
    best: torch.Tensor
    step: int = 0
    best_ppl: float = float("inf")
    best_step: int = 0
    initial_ppl: float = float("nan")
    history: list[dict[str, Any]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    stable: StableState | None = None


_STABLE = "stable."


def _save_checkpoint(
    path: Path, prompt: nn.Parameter, optimizer: torch.optim.Optimizer, config: TrainConfig, windows: TokenWindows,
    state: _TrainState, step: int, context: str, origin: str,
) -> None:
    from safetensors.numpy import save

    from ctpreg.registry.files import atomic_write

    if not is_main():
        return
    current = Snapshot.capture(prompt, optimizer)
    arrays = {**current.to_arrays(), "best": state.best.detach().float().cpu().numpy()}
    stable_meta = None
    if state.stable is not None:
        stable_arrays, stable_meta = state.stable.to_arrays()
        arrays.update({_STABLE + key: value for key, value in stable_arrays.items()})
    meta = {
        "step": step, "adam_step": current.adam_step, "best_ppl": state.best_ppl, "best_step": state.best_step,
        "initial_ppl": state.initial_ppl, "history": state.history, "losses": state.losses, "stable": stable_meta,
        "config": config.digest, "data": windows.data_hash, "context": context, "origin": origin,
    }
    atomic_write(path, save(arrays, metadata={"ctpreg_checkpoint": json.dumps(meta)}), durable=True)


def _load_checkpoint(
    path: Path, prompt: nn.Parameter, optimizer: torch.optim.Optimizer, config: TrainConfig, windows: TokenWindows,
    context: str, origin: str,
) -> _TrainState:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        meta = json.loads(handle.metadata()["ctpreg_checkpoint"])
        arrays = {key: handle.get_tensor(key) for key in handle.keys()}
    if meta["config"] != config.digest or meta["data"] != windows.data_hash:
        raise InvalidInput(f"checkpoint {path} was made with another config or data; remove it or drop --resume")
    if meta["context"] != context:
        raise InvalidInput(
            f"checkpoint {path} belongs to {meta['context'] or 'another run'}, not {context}; "
            "remove it or drop --resume"
        )
    if meta["origin"] != origin:
        raise InvalidInput(f"checkpoint {path} started from another prompt; remove it or drop --resume")
    source = f"checkpoint {path}"
    Snapshot.from_arrays({key: arrays[key] for key in ("prompt", "exp_avg", "exp_avg_sq")}, meta["adam_step"],
                         source).restore(prompt, optimizer)
    stable = None
    if meta["stable"] is not None:
        stable = StableState.from_arrays(
            {key[len(_STABLE):]: value for key, value in arrays.items() if key.startswith(_STABLE)}, meta["stable"]
        )
    return _TrainState(
        best=torch.from_numpy(arrays["best"].copy()).to(prompt.device), step=meta["step"], best_ppl=meta["best_ppl"],
        best_step=meta["best_step"], initial_ppl=meta["initial_ppl"], history=meta["history"],
        losses=meta["losses"], stable=stable,
    )
