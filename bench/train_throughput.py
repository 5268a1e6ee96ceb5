"""Prompt-training throughput: ctpreg's trainer step against PEFT prompt tuning, same compressed model, one run.

Every row trains a prompt from the same init with the same optimizer, schedule, batches, precision (bf16 autocast
where the CPU has it) and objective: the mean NLL of tokens 2..L of each window. PEFT's own labels would also score
token 1 (predicted from the last virtual token), so its labels get token 1 masked with -100 and all rows optimise the
same function. They differ only in how the step computes it:

- ``ctpreg``: the trainer's step: the decoder over prompt + text with its frozen weights cast to bf16 once and eager
  attention (``trainer/fast_steps.py``), then the LM head and the loss fused in row chunks (``registry/head_loss.py``);
- ``ctpreg, weights cast per call, model's attention``: the same without ``fast_steps`` (autocast casts each weight
  on every call; the model's own attention, SDPA);
- ``ctpreg, full logits``: the decoder of the row above, then the LM head on the scored positions and
  ``F.cross_entropy`` over the whole logits tensor (the trainer's step before the chunked head);
- ``PEFT PromptTuning``: ``PromptTuningConfig`` on transformers' forward with labels (the LM head over every
  position, prompt included).

The rows run in lockstep (step k of every row, then step k + 1), so a slow stretch of the machine slows all of them
alike and the ratios compare like with like.
Quality is the select-split perplexity after the same steps, with the same scorer for all rows. ``--profile`` prints
where one step's time goes; ``--loss kd`` (or ``ce+kd``) adds the trainer's distillation step, whose teacher (the
uncompressed model) is timed as its own phase.

    python bench/train_throughput.py --model smollm2-135m --method gptq --bits 3 --steps 20 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, markdown_table  # noqa: E402

from ctpreg.registry.compression import build_spec  # noqa: E402
from ctpreg.registry.head_loss import head_loss  # noqa: E402
from ctpreg.registry.prompted import scored_hidden  # noqa: E402
from ctpreg.registry.settings import Settings  # noqa: E402
from ctpreg.trainer.compress import CompressConfig  # noqa: E402
from ctpreg.trainer.data import load_corpus, make_windows  # noqa: E402
from ctpreg.trainer.evaluate import perplexity  # noqa: E402
from ctpreg.trainer.fast_steps import FastSteps  # noqa: E402
from ctpreg.trainer.pipeline import compress_loaded, load_base  # noqa: E402
from ctpreg.trainer.prompt import init_from_vocabulary  # noqa: E402
from ctpreg.trainer.train import TrainConfig, get_batch, get_lr, uses_autocast  # noqa: E402

Phases = dict[str, float]
StepLoss = Callable[[torch.Tensor, Phases], torch.Tensor]  # (batch, phase seconds to fill) -> loss


class Clock:
    """Seconds per named phase of one step."""

    def __init__(self, phases: Phases) -> None:
        self.phases = phases
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.last
        self.last = now


@contextmanager
def rss_growth() -> Iterator[list[float]]:
    """Sample this process' resident set every 2 ms; yields [MB above its value on entry] (filled on exit): what one
    step allocates on top of the models every row shares."""
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * page / 2**20

    start, growth, done = rss(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            growth[0] = max(growth[0], rss() - start)
            done.wait(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield growth
    finally:
        done.set()
        thread.join()


class Trainer:
    """One row: a prompt parameter, its optimizer and its step; ``step`` records each step's phase seconds."""

    def __init__(self, step_loss: StepLoss, parameter: torch.nn.Parameter, config: TrainConfig,
                 around: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        self.step_loss, self.parameter, self.config, self.around = step_loss, parameter, config, around
        self.optimizer = torch.optim.AdamW([parameter], lr=config.lr)
        self.steps: list[Phases] = []
        self.loss = float("nan")

    def step(self, step: int, windows: torch.Tensor) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = get_lr(step, self.config)
        batch = get_batch(windows, step, self.config)
        phases: Phases = {}
        started = time.perf_counter()
        with self.around():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=uses_autocast(self.config, torch.device("cpu"))):
                value = self.step_loss(batch, phases)
            clock = Clock(phases)
            self.optimizer.zero_grad(set_to_none=True)
            value.backward()
            clock.lap("backward")
        torch.nn.utils.clip_grad_norm_([self.parameter], self.config.grad_clip)
        self.optimizer.step()
        clock.lap("optimizer")
        phases["step"] = time.perf_counter() - started
        self.steps.append(phases)
        self.loss = float(value.detach())

    def medians(self) -> Phases:
        """Median seconds of the step and of each phase over the steps after the first (warm-up)."""
        measured = self.steps[1:] or self.steps
        return {name: statistics.median(s[name] for s in measured) for name in measured[0]}


def ctpreg_step(model, prompt, *, teacher=None, loss: str = "ce") -> StepLoss:
    """The trainer's step (``trainer.prompt.prompt_loss``), timed phase by phase."""
    def step(batch: torch.Tensor, phases: Phases) -> torch.Tensor:
        clock = Clock(phases)
        teacher_hidden = None
        if teacher is not None:
            with torch.no_grad():
                teacher_hidden = scored_hidden(teacher, batch)
            teacher_hidden = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
            clock.lap("teacher forward (no grad)")
        hidden = scored_hidden(model, batch, prompt)
        clock.lap("decoder forward")
        value = head_loss(
            hidden.reshape(-1, hidden.shape[-1]), model.get_output_embeddings(), batch[:, 1:].reshape(-1),
            ce=0.0 if loss == "kd" else 1.0, kd=0.0 if teacher is None else 1.0, teacher_hidden=teacher_hidden,
            teacher_head=teacher.get_output_embeddings() if teacher is not None else None,
        ).mean()
        clock.lap("LM head + loss (chunked, with its gradient)")
        return value
    return step


def full_logits_step(model, prompt) -> StepLoss:
    """The same decoder, then the LM head on scored positions and cross-entropy over the whole logits."""
    def step(batch: torch.Tensor, phases: Phases) -> torch.Tensor:
        clock = Clock(phases)
        hidden = scored_hidden(model, batch, prompt)
        clock.lap("decoder forward")
        logits = model.get_output_embeddings()(hidden).float()
        value = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        clock.lap("LM head + loss (full logits)")
        return value
    return step


def peft_step(peft_model) -> StepLoss:
    def step(batch: torch.Tensor, phases: Phases) -> torch.Tensor:
        clock = Clock(phases)
        labels = batch.clone()
        labels[:, 0] = -100  # token 1 is not scored by the other rows either
        value = peft_model(input_ids=batch, labels=labels).loss
        clock.lap("forward (decoder, LM head on every position, loss)")
        return value
    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--model-path")
    parser.add_argument("--method", default="gptq")
    parser.add_argument("--bits", type=int)
    parser.add_argument("--dataset", default="wiki")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num-tokens", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=20)
    parser.add_argument("--calibration-windows", type=int, default=32)
    parser.add_argument("--loss", choices=["ce", "kd", "ce+kd"], default="ce",
                        help="kd or ce+kd adds a row for the trainer's distillation step (teacher timed apart)")
    parser.add_argument("--profile", action="store_true", help="print where one step's time goes, per row")
    args = parser.parse_args()
    from peft import PromptTuningConfig, get_peft_model

    print(describe())
    home = Settings.from_env().home
    loaded = load_base(args.model, model_path=args.model_path, device="cpu", home=home)
    spec = build_spec(args.method, bits=args.bits)
    model = compress_loaded(
        loaded, CompressConfig(spec, calibration=args.dataset, calibration_windows=args.calibration_windows), home
    ).model
    windows = make_windows(
        loaded.tokenizer, load_corpus(args.dataset), seq_len=args.seq_len, max_select=args.eval_windows, max_test=1
    )
    config = TrainConfig(num_tokens=args.num_tokens, steps=args.steps, batch_size=args.batch_size, warmup_steps=2)
    init = init_from_vocabulary(model, args.num_tokens, seed=config.seed)
    tokens_per_step = args.batch_size * (args.seq_len - 1)

    rows: dict[str, Trainer] = {}

    def add(name: str, make_step: Callable[[torch.nn.Parameter], StepLoss],
            around: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        parameter = torch.nn.Parameter(init.clone())
        rows[name] = Trainer(make_step(parameter), parameter, config, around)

    peft_model = get_peft_model(
        copy.deepcopy(model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.num_tokens)
    )
    embedding = peft_model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        embedding.copy_(init)
    frozen = [model] + ([loaded.model] if args.loss != "ce" else [])
    fast = (FastSteps(frozen, batch=args.batch_size, tokens=args.num_tokens + args.seq_len)
            if uses_autocast(config, torch.device("cpu")) else None)
    trainer_mode = fast.active if fast is not None else contextlib.nullcontext
    add("ctpreg", lambda prompt: ctpreg_step(model, prompt), trainer_mode)
    add("ctpreg, weights cast per call, model's attention", lambda prompt: ctpreg_step(model, prompt))
    add("ctpreg, full logits", lambda prompt: full_logits_step(model, prompt))
    rows["PEFT PromptTuning"] = Trainer(peft_step(peft_model), embedding, config)
    if args.loss != "ce":
        add(f"ctpreg, {args.loss}", lambda prompt: ctpreg_step(model, prompt, teacher=loaded.model, loss=args.loss),
            trainer_mode)
    peaks: dict[str, float] = {}
    for step in range(config.steps):
        for name, trainer in rows.items():
            with rss_growth() as growth:
                trainer.step(step, windows.train)
            peaks[name] = max(peaks.get(name, 0.0), growth[0])

    baseline = perplexity(model, windows.select).ppl
    precision = "bf16 autocast" if uses_autocast(config, torch.device("cpu")) else "fp32 (no native bf16 on this CPU)"
    print(f"\n{args.model} {spec.canonical}, {args.num_tokens}-token prompt, batch {args.batch_size}x{args.seq_len}, "
          f"{args.steps} steps, {precision}, {torch.get_num_threads()} threads; medians over steps 2..{args.steps}; "
          f"select split: {windows.select.shape[0]} {args.dataset} windows, scored tokens only "
          f"(no prompt: ppl {baseline:.2f})\n")
    medians = {name: trainer.medians() for name, trainer in rows.items()}
    peft_seconds = medians["PEFT PromptTuning"]["step"]
    table, finite = [], True
    for name, trainer in rows.items():
        seconds = medians[name]["step"]
        ppl = perplexity(model, windows.select, prompt=trainer.parameter.detach().float()).ppl
        finite &= bool(torch.isfinite(torch.tensor([ppl, trainer.loss])).all())
        table.append([name, f"{seconds:.2f}", f"{tokens_per_step / seconds:.0f}", f"{peft_seconds / seconds:.2f}x",
                      f"{peaks[name]:.0f}", f"{trainer.loss:.3f}", f"{ppl:.2f}"])
    print(markdown_table(
        ["trainer", "s/step", "tokens/s", "speed vs PEFT", "peak RSS growth in a step, MB", "last train loss",
         f"select ppl after {args.steps} steps"], table,
    ))
    if args.profile:
        for name, phases in medians.items():
            print(f"\none step of {name}: {phases['step']:.3f} s\n")
            print(markdown_table(["phase", "seconds", "share"], [
                [phase, f"{seconds:.3f}", f"{seconds / phases['step']:.0%}"]
                for phase, seconds in phases.items() if phase != "step"
            ]))
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
