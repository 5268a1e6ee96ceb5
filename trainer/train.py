"""Soft-prompt training loop (nanoGPT shape: config at the top, ``get_batch`` / ``get_lr``, one loop in a fixed order).

Every model weight is frozen; the prompt is the only parameter the optimizer sees, so no optimizer state exists for
the model. AdamW with linear warmup then cosine decay, gradient clipping, and every ``eval_every`` steps a perplexity
on the ``select`` split; the prompt that is best there is kept. The ``test`` split is never seen here. Checkpoints
are safetensors (prompt, best prompt, Adam moments) plus JSON in the header, never pickle; ``resume`` continues
exactly where a checkpoint left off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
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
from .prompt import LOSSES, init_from_vocabulary, prompt_loss

log = logging.getLogger(__name__)
SCHEDULES = ("cycle", "sum")


@dataclass(frozen=True)
class TrainConfig:
    num_tokens: int = field(default=50, metadata={"help": "virtual tokens in the prompt (bench/tune.py)"})
    steps: int = field(default=100, metadata={"help": "optimizer steps"})
    lr: float = field(default=3e-2, metadata={"help": "peak learning rate (AdamW)"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warmup from 0 to lr"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine decay ends at lr * this"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay on the prompt"})
    batch_size: int = field(default=4, metadata={"help": "windows per step (per rank under a launcher)"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm"})
    eval_every: int = field(default=25, metadata={"help": "measure the select split every K steps (and at the end)"})
    eval_windows: int | None = field(default=None, metadata={"help": "select windows used while training"})
    eval_batch_size: int = field(default=4, metadata={"help": "windows per evaluation batch"})
    autocast_bf16: bool = field(
        default=True,
        metadata={"help": "bf16 autocast for training steps where the hardware has bf16 (not for evaluation)"},
    )
    seed: int = field(default=0, metadata={"help": "prompt init and batch order"})
    loss: str = field(default="ce", metadata={"help": "objective: ce, kd (KL to the uncompressed model) or ce+kd"})
    schedule: str = field(
        default="cycle",
        metadata={"help": "several targets: cycle (one target per step, in turn) or sum (all targets every step)"},
    )

    def __post_init__(self) -> None:
        positive = {"num_tokens": self.num_tokens, "steps": self.steps, "batch_size": self.batch_size,
                    "eval_every": self.eval_every, "eval_batch_size": self.eval_batch_size}
        for name, value in positive.items():
            if value < 1:
                raise InvalidInput(f"{name} must be >= 1, got {value}")
        if not 0 < self.lr < 1:
            raise InvalidInput(f"lr must lie in (0, 1), got {self.lr}")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1 or self.grad_clip <= 0:
            raise InvalidInput("warmup_steps >= 0, 0 <= min_lr_ratio <= 1 and grad_clip > 0 are required")
        if self.eval_windows is not None and self.eval_windows < 1:
            raise InvalidInput("eval_windows must be >= 1")
        if self.loss not in LOSSES:
            raise InvalidInput(f"unknown loss {self.loss!r}: use {', '.join(LOSSES)}")
        if self.schedule not in SCHEDULES:
            raise InvalidInput(f"unknown schedule {self.schedule!r}: use {', '.join(SCHEDULES)}")

    @property
    def needs_teacher(self) -> bool:
        return self.loss != "ce"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    prompt: torch.Tensor
    best_select_ppl: float
    best_step: int
    initial_select_ppl: float
    history: list[dict[str, Any]]
    step_seconds: float
    tokens_per_second: float


def get_lr(step: int, config: TrainConfig) -> float:
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
) -> TrainResult:
    """Learn a prompt for the frozen ``model`` on ``windows.train``, keeping the best by perplexity on ``select``.

    Several models (compressed versions of one base model) learn one prompt: each step trains on one of them in turn
    (``schedule=cycle``) or on all (``sum``, their mean loss), and the best step is the one whose geometric mean of
    select perplexities over the models is lowest. ``context`` names what the model is (source, fingerprint,
    compression, calibration); a checkpoint only resumes under the same context, config and data. ``teacher`` (the
    uncompressed model, frozen) is needed by the kd losses.
    """
    models = [model] if isinstance(model, nn.Module) else list(model)
    device = models[0].get_input_embeddings().weight.device
    if any(p.requires_grad for m in models for p in m.parameters()):
        raise InvalidInput("the model must be frozen before prompt training (trainer.models.freeze)")
    if config.needs_teacher and teacher is None:
        raise InvalidInput(f"loss {config.loss} needs the uncompressed model as teacher")
    prompt = nn.Parameter(init_from_vocabulary(models[0], config.num_tokens, seed=config.seed).to(device))
    optimizer = torch.optim.AdamW([prompt], lr=config.lr, weight_decay=config.weight_decay)
    select = windows.select[: config.eval_windows] if config.eval_windows else windows.select
    state = _TrainState(best=prompt.detach().clone())
    if resume and checkpoint is not None and checkpoint.is_file():
        state = _load_checkpoint(checkpoint, prompt, optimizer, config, windows, context)
        log.info("resumed from %s at step %d", checkpoint, state.step)

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

    if state.step == 0 and not state.history:
        state.initial_ppl = evaluate(0)
    fast = FastSteps([*models, *([teacher] if teacher is not None else [])], batch=config.batch_size,
                     tokens=config.num_tokens + windows.seq_len) if uses_autocast(config, device) else None
    tokens_per_step = config.batch_size * rank_and_world()[1] * (windows.seq_len - 1)
    bar = progress(range(state.step, config.steps), desc="train", unit="step", initial=state.step, total=config.steps)
    started, steps_run = time.perf_counter(), 0
    for step in bar:
        if step > 0 and step % config.eval_every == 0 and state.history[-1]["step"] != step:
            evaluate(step)
            if checkpoint is not None:
                _save_checkpoint(checkpoint, prompt, optimizer, config, windows, state, step, context)
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
        steps_run += 1
        state.losses.append(float(loss.detach()))
        last_select = state.history[-1]["select_ppl"]
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{state.losses[-1]:.3f}", select_ppl=f"{last_select:.2f}",
                            best=f"{state.best_ppl:.2f}")
        state.step = step + 1
    elapsed = time.perf_counter() - started
    if state.history[-1]["step"] != config.steps:
        evaluate(config.steps)
    if checkpoint is not None:
        _save_checkpoint(checkpoint, prompt, optimizer, config, windows, state, config.steps, context)
    step_seconds = elapsed / steps_run if steps_run else float("nan")
    return TrainResult(
        prompt=state.best.cpu(), best_select_ppl=state.best_ppl, best_step=state.best_step,
        initial_select_ppl=state.initial_ppl, history=state.history, step_seconds=step_seconds,
        tokens_per_second=tokens_per_step / step_seconds if steps_run else float("nan"),
    )


@dataclass
class _TrainState:
    best: torch.Tensor
    step: int = 0
    best_ppl: float = float("inf")
    best_step: int = 0
    initial_ppl: float = float("nan")
    history: list[dict[str, Any]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def _save_checkpoint(
    path: Path, prompt: nn.Parameter, optimizer: torch.optim.Optimizer, config: TrainConfig, windows: TokenWindows,
    state: _TrainState, step: int, context: str,
) -> None:
    from safetensors.torch import save

    from ctpreg.registry.files import atomic_write

    if not is_main():
        return
    moments = optimizer.state.get(prompt, {})
    tensors = {"prompt": prompt.detach().cpu().contiguous(), "best": state.best.cpu().contiguous()}
    for key in ("exp_avg", "exp_avg_sq"):
        if key in moments:
            tensors[key] = moments[key].detach().cpu().contiguous()
    meta = {
        "step": step, "adam_step": float(moments["step"]) if "step" in moments else 0.0,
        "best_ppl": state.best_ppl, "best_step": state.best_step, "initial_ppl": state.initial_ppl,
        "history": state.history, "config": config.digest, "data": windows.data_hash, "context": context,
    }
    atomic_write(path, save(tensors, metadata={"ctpreg_checkpoint": json.dumps(meta)}), durable=True)


def _load_checkpoint(
    path: Path, prompt: nn.Parameter, optimizer: torch.optim.Optimizer, config: TrainConfig, windows: TokenWindows,
    context: str,
) -> _TrainState:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["ctpreg_checkpoint"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if meta["config"] != config.digest or meta["data"] != windows.data_hash:
        raise InvalidInput(f"checkpoint {path} was made with another config or data; remove it or drop --resume")
    if meta.get("context", "") != context:
        raise InvalidInput(
            f"checkpoint {path} belongs to {meta.get('context') or 'another run'}, not {context}; "
            "remove it or drop --resume"
        )
    with torch.no_grad():
        prompt.copy_(tensors["prompt"])
    if "exp_avg" in tensors:
        optimizer.state[prompt] = {
            "step": torch.tensor(meta["adam_step"]),
            "exp_avg": tensors["exp_avg"].to(prompt.device),
            "exp_avg_sq": tensors["exp_avg_sq"].to(prompt.device),
        }
    return _TrainState(
        best=tensors["best"].to(prompt.device), step=meta["step"], best_ppl=meta["best_ppl"],
        best_step=meta["best_step"], initial_ppl=meta["initial_ppl"], history=meta["history"],
    )
