"""Training steps with bf16 weights cast once and eager attention: the same numbers where they must be, and the
model handed back exactly as it was for evaluation."""

from __future__ import annotations

import torch
from torch import nn

from ctpreg.trainer.evaluate import perplexity
from ctpreg.trainer.fast_steps import EAGER_ATTENTION_BYTES, FastSteps, eager_attention_bytes
from ctpreg.trainer.models import freeze
from ctpreg.trainer.prompt import init_from_vocabulary, mean_nll
from tiny import tiny_llama


def bf16_step(model: nn.Module, prompt: nn.Parameter, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mean_nll(model, batch, prompt)
    prompt.grad = None
    loss.backward()
    return loss.detach(), prompt.grad.clone()


def frozen_tiny(seed: int = 0) -> nn.Module:
    model = tiny_llama(seed=seed).model
    freeze(model)
    return model


def test_weights_cast_once_give_bitwise_the_step_of_plain_autocast() -> None:
    model = frozen_tiny()
    torch.manual_seed(1)
    batch = torch.randint(3, model.config.vocab_size, (2, 24))
    prompt = nn.Parameter(init_from_vocabulary(model, 4, seed=0))
    fast = FastSteps([model], batch=2, tokens=28)
    model.set_attn_implementation("eager")  # the attention the fast step uses: only the weights differ below
    plain = bf16_step(model, prompt, batch)
    model.set_attn_implementation("sdpa")
    with fast.active():
        assert model.config._attn_implementation == "eager"
        assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
        swapped = bf16_step(model, prompt, batch)
    assert torch.equal(plain[0], swapped[0]) and torch.equal(plain[1], swapped[1])


def test_the_model_is_handed_back_as_it_was() -> None:
    model = frozen_tiny()
    before = {name: p for name, p in model.named_parameters()}
    attention = model.config._attn_implementation
    windows = torch.randint(3, model.config.vocab_size, (3, 16))
    ppl = perplexity(model, windows).ppl
    fast = FastSteps([model], batch=2, tokens=28)
    with fast.active():
        pass
    assert model.config._attn_implementation == attention
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
    assert all(p.dtype == torch.float32 for p in after.values())
    assert perplexity(model, windows).ppl == ppl, "evaluation sees float32 weights and the model's own attention"


def test_a_tied_head_and_trainable_weights_are_left_alone() -> None:
    model = frozen_tiny()
    model.lm_head.weight = model.get_input_embeddings().weight  # tied, as SmolLM2's
    extra = nn.Linear(4, 4)  # trainable: not the frozen model's
    model.add_module("extra", extra)
    with FastSteps([model], batch=2, tokens=28).active():
        assert model.lm_head.weight.dtype == torch.float32 and model.lm_head.weight is model.model.embed_tokens.weight
        assert extra.weight.dtype == torch.float32 and extra.weight.requires_grad


def test_eager_attention_only_while_its_saved_probabilities_fit() -> None:
    model = frozen_tiny()
    own = model.config._attn_implementation
    with FastSteps([model], batch=2, tokens=28).active():
        assert model.config._attn_implementation == "eager"
    too_long = 1 + int((EAGER_ATTENTION_BYTES / eager_attention_bytes(model, batch=2, tokens=1)) ** 0.5)
    with FastSteps([model], batch=2, tokens=too_long).active():
        assert model.config._attn_implementation == own
        assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16, "the weights are cast all the same"


def test_a_model_that_cannot_switch_attention_is_trained_as_it_is() -> None:
    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(8, 4)
            self.proj = nn.Linear(4, 4).requires_grad_(False)

        def get_input_embeddings(self) -> nn.Embedding:
            return self.embed

    model = Fixed()
    with FastSteps([model], batch=2, tokens=28).active():
        assert model.proj.weight.dtype == torch.bfloat16
    assert model.proj.weight.dtype == torch.float32
