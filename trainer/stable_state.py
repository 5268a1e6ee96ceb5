"""The prompt and its AdamW state at one step, and the stable-phase state a run continues from (DESIGN §13).

A warmup–stable–decay run (``train.get_lr``) holds its learning rate constant until ``stable_end`` and then decays;
every step before ``stable_end`` depends on its index only, never on the run's length. So the prompt and AdamW's
state at ``stable_end`` (before the decay) continue exactly into any longer run whose own decay starts no earlier,
and each published prompt is a short decay from it.

The registry stores a ``StableState`` as a safetensors object through safetensors' numpy API, never pickle:
``to_arrays`` gives the float32 arrays ``prompt``, ``exp_avg`` and ``exp_avg_sq`` (one shape, [num_tokens, hidden])
and JSON metadata ``step``, ``adam_step``, ``config_digest``, ``data_hash`` and ``context``; ``from_arrays`` checks
every one of them on the way back in. Training checkpoints store their prompt and moments through ``Snapshot`` too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ctpreg.registry.errors import InvalidInput

ARRAYS = ("prompt", "exp_avg", "exp_avg_sq")
META = ("step", "adam_step", "config_digest", "data_hash", "context")
MAX_CONTEXT_CHARS = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, eq=False)
class Snapshot:
    """A prompt and AdamW's state for it: both moments and the optimizer's step count (its bias correction reads
    it). CPU float32 copies, so the run that made them cannot change them."""

    prompt: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    adam_step: int

    @classmethod
    def capture(cls, prompt: nn.Parameter, optimizer: torch.optim.Optimizer) -> Snapshot:
        """Before the first step AdamW holds no state; zero moments at step 0 are what it starts from."""
        moments = optimizer.state.get(prompt, {})

        def copy(value: torch.Tensor) -> torch.Tensor:
            return value.detach().to("cpu", torch.float32, copy=True)

        zeros = torch.zeros_like(prompt)
        return cls(copy(prompt), copy(moments.get("exp_avg", zeros)), copy(moments.get("exp_avg_sq", zeros)),
                   int(moments["step"]) if "step" in moments else 0)

    def restore(self, prompt: nn.Parameter, optimizer: torch.optim.Optimizer) -> None:
        """Put this state into ``prompt`` and ``optimizer`` (copies: training must not write into the snapshot)."""
        with torch.no_grad():
            prompt.copy_(self.prompt)
        optimizer.state[prompt] = {
            "step": torch.tensor(float(self.adam_step)),  # AdamW keeps its count as a tensor of the default dtype
            "exp_avg": self.exp_avg.to(prompt.device, copy=True),
            "exp_avg_sq": self.exp_avg_sq.to(prompt.device, copy=True),
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {key: getattr(self, key).numpy().copy() for key in ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], adam_step: Any, source: str) -> Snapshot:
        """The snapshot ``arrays`` hold, or ``InvalidInput`` naming what is wrong with them."""
        if not isinstance(arrays, Mapping) or set(arrays) != set(ARRAYS):
            found = sorted(arrays) if isinstance(arrays, Mapping) else type(arrays).__name__
            raise InvalidInput(f"{source}: expected the arrays {', '.join(ARRAYS)}, found {found}")
        for key in ARRAYS:
            value = arrays[key]
            if not isinstance(value, np.ndarray) or value.dtype != np.float32:
                raise InvalidInput(f"{source}: {key} must be a float32 array, found {getattr(value, 'dtype', value)}")
            if value.ndim != 2 or 0 in value.shape:
                raise InvalidInput(f"{source}: {key} must be 2-D [num_tokens, hidden], found shape {value.shape}")
            if not np.isfinite(value).all():
                raise InvalidInput(f"{source}: {key} holds NaN or Inf")
        shapes = {arrays[key].shape for key in ARRAYS}
        if len(shapes) != 1:
            raise InvalidInput(f"{source}: the prompt and its moments must have one shape, found {sorted(shapes)}")
        if (arrays["exp_avg_sq"] < 0).any():
            raise InvalidInput(f"{source}: exp_avg_sq is a mean of squares; it holds negative values")
        if not _is_int(adam_step) or adam_step < 0:
            raise InvalidInput(f"{source}: adam_step must be an integer >= 0, found {adam_step!r}")
        prompt, exp_avg, exp_avg_sq = (torch.from_numpy(np.array(arrays[key], copy=True)) for key in ARRAYS)
        return cls(prompt, exp_avg, exp_avg_sq, adam_step)


@dataclass(frozen=True, eq=False)
class StableState:
    """Where a WSD run stood at ``step`` = its ``stable_end``, before the decay, and what a run continuing from it
    must share: ``config_digest`` (``TrainConfig.trajectory_digest``), ``data_hash`` (``TokenWindows.data_hash``)
    and ``context`` (what the model is)."""

    snapshot: Snapshot
    step: int
    config_digest: str
    data_hash: str
    context: str

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        meta = {"step": self.step, "adam_step": self.snapshot.adam_step, "config_digest": self.config_digest,
                "data_hash": self.data_hash, "context": self.context}
        return self.snapshot.to_arrays(), meta

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], meta: Mapping[str, Any]) -> StableState:
        """The state that ``to_arrays`` gave, every array and field checked (``InvalidInput`` names the first bad
        one); what it must match is checked by the run that continues from it."""
        source = "optimizer state"
        if not isinstance(meta, Mapping):
            raise InvalidInput(f"{source}: its metadata must be an object, found {type(meta).__name__}")
        for key in META:
            if key not in meta:
                raise InvalidInput(f"{source}: missing {key}")
        unknown = sorted(set(meta) - set(META))
        if unknown:
            raise InvalidInput(f"{source}: unknown {', '.join(map(str, unknown))}")
        step = meta["step"]
        if not _is_int(step) or step < 0:
            raise InvalidInput(f"{source}: step must be an integer >= 0, found {step!r}")
        if _is_int(meta["adam_step"]) and meta["adam_step"] > step:
            raise InvalidInput(f"{source}: adam_step {meta['adam_step']} exceeds step {step}")
        for key in ("config_digest", "data_hash"):
            if not isinstance(meta[key], str) or not _HEX64.fullmatch(meta[key]):
                raise InvalidInput(f"{source}: {key} must be 64 lowercase hex digits")
        context = meta["context"]
        if not isinstance(context, str) or len(context) > MAX_CONTEXT_CHARS or not context.isprintable():
            raise InvalidInput(f"{source}: context must be text of at most {MAX_CONTEXT_CHARS} printable characters")
        snapshot = Snapshot.from_arrays(arrays, meta["adam_step"], source)
        return cls(snapshot, step, meta["config_digest"], meta["data_hash"], context)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
