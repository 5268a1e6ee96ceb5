"""The frozen models as a bf16 training step runs them fastest on a CPU, and back as evaluation needs them.

Two changes, both measured on SmolLM2-135M, a 50-token prompt, batch 4x256, 2 cores with AVX512-BF16:

- **Weights cast once.** Under bf16 autocast every ``nn.Linear`` casts its float32 weight to bf16 on each call
  (autocast keeps casts only of weights that require grad, and a frozen model's do not), forward and backward. The
  weights are cast once here and swapped in for the step: the matmuls see the very same bf16 values, so the loss
  and the prompt's gradient are bitwise those of plain autocast (2.46 -> 2.29 s/step).
- **Eager attention.** PyTorch's CPU flash-attention kernel took a third of a step at these lengths; the eager
  path's batched matmuls run in bf16 (2.07 -> 1.63 s/step). The numbers differ within bf16 rounding (the prompt's
  gradient by 4% relative), so ``bench/train_throughput.py`` reports the select perplexity reached with and without.

Eager attention keeps every layer's attention probabilities for backward, batch x heads x tokens^2 each, where the
flash kernel keeps none: it is used only while those fit in ``EAGER_ATTENTION_BYTES`` (the measured step above
keeps about 0.6 GB); longer windows keep the model's own attention. Evaluation runs in float32 with the model's own
attention: the swap is undone outside ``active()``. The bf16 copies cost two bytes per weight of each model while
training. A tied LM head is left alone (``registry.head_loss`` casts it once per call).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

FAST_ATTENTION = "eager"
EAGER_ATTENTION_BYTES = 1 << 30
SAVED_BYTES_PER_PROBABILITY = 6  # the float32 softmax and its bf16 copy for the next matmul


def eager_attention_bytes(model: nn.Module, *, batch: int, tokens: int) -> int:
    """What eager attention keeps for backward over all layers: a probability per head, query and key."""
    config = model.config
    return (config.num_hidden_layers * batch * config.num_attention_heads * tokens * tokens
            * SAVED_BYTES_PER_PROBABILITY)


class FastSteps:
    """bf16 copies of the frozen float32 ``nn.Linear`` weights of ``models``, made once, and ``active()`` to train
    with them (and with eager attention where its saved probabilities fit)."""

    def __init__(self, models: Sequence[nn.Module], *, batch: int, tokens: int) -> None:
        """``batch`` windows of ``tokens`` positions (prompt included) per step decide whether eager attention fits."""
        self.models = list(models)
        self._attention = [
            (model, model.config._attn_implementation) for model in self.models
            if _switches_attention(model) and eager_attention_bytes(model, batch=batch, tokens=tokens)
            <= EAGER_ATTENTION_BYTES
        ]
        self._copies: list[tuple[nn.Linear, nn.Parameter, nn.Parameter]] = []
        for model in self.models:
            embeddings = model.get_input_embeddings().weight
            for module in model.modules():
                weight = getattr(module, "weight", None)
                if (type(module) is nn.Linear and weight is not None and weight.dtype == torch.float32
                        and not weight.requires_grad and weight is not embeddings):
                    fast = nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
                    self._copies.append((module, weight, fast))

    @contextmanager
    def active(self) -> Iterator[None]:
        for module, _, fast in self._copies:
            module.weight = fast
        for model, _ in self._attention:
            model.set_attn_implementation(FAST_ATTENTION)
        try:
            yield
        finally:
            for module, original, _ in self._copies:
                module.weight = original
            for model, implementation in self._attention:
                model.set_attn_implementation(implementation)


def _switches_attention(model: nn.Module) -> bool:
    """Whether the model takes another attention implementation at run time (transformers' own models do); tried
    once and undone, so a model that cannot is left as it is rather than warned about at every step."""
    config = getattr(model, "config", None)
    if not hasattr(model, "set_attn_implementation") or config is None:
        return False
    own = config._attn_implementation
    if own == FAST_ATTENTION:
        return False
    model.set_attn_implementation(FAST_ATTENTION)
    switched = config._attn_implementation == FAST_ATTENTION
    model.set_attn_implementation(own)
    return switched
