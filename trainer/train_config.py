"""What a training run does, as one frozen config with a note per field: the single definition of every training
default, read by ``trainer.train`` and by the CLI (torch-free, so ``ctpreg train --help`` stays fast).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ctpreg.registry.errors import InvalidInput

LOSSES = ("ce", "kd", "ce+kd")
SCHEDULES = ("cycle", "sum")
LR_SCHEDULES = ("wsd", "cosine")
# What does not change the path to the end of the stable phase, so a continuing run may choose it afresh: the run's
# length and its own decay (each run decays for its own length), evaluation, and bf16 autocast (the arithmetic's
# precision, which only some hardware offers; a state continues on another machine).
NOT_TRAJECTORY = ("steps", "decay_fraction", "min_lr_ratio", "eval_every", "eval_windows", "eval_batch_size",
                  "autocast_bf16")


@dataclass(frozen=True)
class TrainConfig:
    num_tokens: int = field(default=50, metadata={"help": "virtual tokens in the prompt (bench/tune.py)"})
    steps: int = field(default=100, metadata={"help": "index the run ends at (continuing: counted from step 0)"})
    lr: float = field(default=3e-2, metadata={"help": "peak learning rate (AdamW)"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warmup from 0 to lr"})
    lr_schedule: str = field(
        default="wsd",
        metadata={"help": "wsd (warmup, constant lr, then a short decay: continuable) or cosine (decay all along)"},
    )
    decay_fraction: float = field(default=0.2, metadata={"help": "wsd: the last fraction of steps decays"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "the decay ends at lr * this"})
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
        if self.lr_schedule not in LR_SCHEDULES:
            raise InvalidInput(f"unknown lr_schedule {self.lr_schedule!r}: use {', '.join(LR_SCHEDULES)}")
        if not 0 < self.decay_fraction < 1:
            raise InvalidInput(f"decay_fraction must lie in (0, 1), got {self.decay_fraction}")

    @property
    def needs_teacher(self) -> bool:
        return self.loss != "ce"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def trajectory_digest(self) -> str:
        """What a run continuing a ``StableState`` must share with the run that took it (all but ``NOT_TRAJECTORY``)."""
        kept = {k: v for k, v in self.to_dict().items() if k not in NOT_TRAJECTORY}
        return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


DEFAULTS = TrainConfig()
