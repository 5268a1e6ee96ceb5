"""Honest evaluation: perplexity over scored tokens only, and zero-shot multiple choice by log-likelihood.

Perplexity = exp(total NLL / scored tokens) over the same windows for every condition (full, compressed,
compressed + prompt); see ``prompt`` for which tokens are scored. Under ``torch.distributed`` each rank takes its
share of windows and the sums are all-reduced, so no window is evaluated twice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctpreg.registry.errors import InvalidInput

from .distributed import all_reduce_sum, rank_and_world
from .prompt import token_nll
from .progress import progress


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    nll: float
    tokens: int


@torch.no_grad()
def perplexity(
    model: nn.Module, windows: torch.Tensor, *, prompt: torch.Tensor | None = None, batch_size: int = 4,
    label: str = "eval",
) -> Perplexity:
    rank, world = rank_and_world()
    device = model.get_input_embeddings().weight.device
    mine = windows[rank::world]
    total = torch.zeros(2, dtype=torch.float64)
    for start in progress(range(0, mine.shape[0], batch_size), desc=label, unit="batch"):
        batch = mine[start : start + batch_size].to(device)
        total[0] += token_nll(model, batch, prompt).double().sum().cpu()
        total[1] += batch.shape[0] * (batch.shape[1] - 1)  # tokens 2..L of each window
    nll, tokens = all_reduce_sum(total).tolist()
    if tokens == 0:
        raise InvalidInput("no tokens to evaluate")
    return Perplexity(ppl=math.exp(nll / tokens), nll=nll, tokens=int(tokens))


@dataclass(frozen=True)
class ChoiceItem:
    question: str
    choices: tuple[str, ...]
    answer: int


def load_tasks(path: Path) -> list[ChoiceItem]:
    """``{"question": str, "choices": [str, ...], "answer": index}`` per line."""
    if not path.is_file():
        raise InvalidInput(f"tasks file {path} does not exist")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            item = ChoiceItem(str(row["question"]), tuple(str(c) for c in row["choices"]), int(row["answer"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise InvalidInput(f"{path}:{number}: expected question, choices and answer") from None
        if len(item.choices) < 2 or not 0 <= item.answer < len(item.choices):
            raise InvalidInput(f"{path}:{number}: need >= 2 choices and an answer index among them")
        items.append(item)
    if not items:
        raise InvalidInput(f"{path} holds no tasks")
    return items


@torch.no_grad()
def choice_loglik(model: nn.Module, tokenizer: Any, question: str, choice: str, prompt: torch.Tensor | None) -> float:
    """Summed log-likelihood of the choice's tokens after the question."""
    device = model.get_input_embeddings().weight.device
    context = tokenizer(question, add_special_tokens=False)["input_ids"]
    continuation = tokenizer(" " + choice.strip(), add_special_tokens=False)["input_ids"]
    if not context or not continuation:
        raise InvalidInput(f"empty question or choice in {question!r} / {choice!r}")
    ids = torch.tensor([context + continuation], device=device)
    nll = token_nll(model, ids, prompt)[0, len(context) - 1 :]
    return float(-nll.sum())


def multiple_choice_accuracy(
    model: nn.Module, tokenizer: Any, items: list[ChoiceItem], *, prompt: torch.Tensor | None = None,
    label: str = "tasks",
) -> float:
    correct = 0
    for item in progress(items, desc=label, unit="q"):
        scores = [choice_loglik(model, tokenizer, item.question, choice, prompt) for choice in item.choices]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == item.answer)
    return correct / len(items)
