"""The chunked LM-head losses equal F.cross_entropy / F.kl_div on the full logits: values, gradients, autocast."""

import pytest
import torch
import torch.nn.functional as F

from torch import nn

from ctpreg.registry.head_loss import head_loss


def _head(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    head.requires_grad_(False)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias)
    return head


def _reference(hidden, weight, bias, targets):
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="none")


@pytest.mark.parametrize("rows_per_chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("with_bias", [False, True])
def test_values_and_gradients_equal_the_full_logits(rows_per_chunk: int, with_bias: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(97, 16, generator=generator)
    bias = torch.randn(97, generator=generator) if with_bias else None
    targets = torch.randint(0, 97, (45,), generator=generator)
    row_weights = torch.rand(45, generator=generator)  # backward must honour any upstream gradient, not only a mean
    hidden = torch.randn(45, 16, generator=generator, requires_grad=True)
    reference = _reference(hidden, weight, bias, targets)
    (reference * row_weights).sum().backward()
    expected_grad, hidden.grad = hidden.grad.clone(), None

    ours = head_loss(hidden, _head(weight, bias), targets, rows_per_chunk=rows_per_chunk)
    (ours * row_weights).sum().backward()
    torch.testing.assert_close(ours, reference.detach(), rtol=1e-5, atol=1e-5)
    # float32 sums in another order: one element in 720 has been seen 1.2e-6 off (relative 1e-4) under load
    torch.testing.assert_close(hidden.grad, expected_grad, rtol=1e-4, atol=1e-5)


def test_under_bf16_autocast_it_matches_autocast_logits_to_bf16_rounding() -> None:
    generator = torch.Generator().manual_seed(1)
    weight, targets = torch.randn(300, 32, generator=generator), torch.randint(0, 300, (40,), generator=generator)
    hidden = torch.randn(40, 32, generator=generator, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = _reference(hidden, weight, None, targets)
        ours = head_loss(hidden, _head(weight), targets, rows_per_chunk=16)
    torch.testing.assert_close(ours, reference.detach(), rtol=1e-6, atol=1e-6)  # same bf16 logits, fp32 loss
    (expected,) = torch.autograd.grad(reference.mean(), hidden)
    (got,) = torch.autograd.grad(ours.mean(), hidden)
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-3)  # bf16 gradient matmul, rounded differently


def test_no_gradient_work_without_grad_and_a_trainable_head_is_refused() -> None:
    weight, targets = torch.randn(11, 4), torch.randint(0, 11, (3,))
    with torch.no_grad():
        assert not head_loss(torch.randn(3, 4), _head(weight), targets).requires_grad
        assert head_loss(torch.randn(3, 4), _head(weight).requires_grad_(), targets).shape == (3,)  # evaluation
    with pytest.raises(ValueError, match="freeze"):
        head_loss(torch.randn(3, 4), _head(weight).requires_grad_(), targets)
    with pytest.raises(ValueError, match="teacher"):
        head_loss(torch.randn(3, 4), _head(weight), targets, kd=1.0)


@pytest.mark.parametrize(("ce", "kd"), [(0.0, 1.0), (1.0, 1.0), (0.5, 2.0)])
def test_fused_kd_equals_cross_entropy_plus_kl_on_the_full_logits(ce: float, kd: float) -> None:
    generator = torch.Generator().manual_seed(2)
    student, teacher = _head(torch.randn(83, 12, generator=generator)), _head(torch.randn(83, 10, generator=generator))
    targets = torch.randint(0, 83, (30,), generator=generator)
    teacher_hidden = torch.randn(30, 10, generator=generator)
    hidden = torch.randn(30, 12, generator=generator, requires_grad=True)
    log_probs = F.log_softmax(student(hidden), dim=-1)
    teacher_log_probs = F.log_softmax(teacher(teacher_hidden), dim=-1)
    kl = F.kl_div(log_probs, teacher_log_probs, log_target=True, reduction="none").sum(-1)
    reference = ce * F.nll_loss(log_probs, targets, reduction="none") + kd * kl
    (expected,) = torch.autograd.grad(reference.mean(), hidden)
    ours = head_loss(hidden, student, targets, ce=ce, kd=kd, teacher_hidden=teacher_hidden, teacher_head=teacher,
                     rows_per_chunk=7)
    (got,) = torch.autograd.grad(ours.mean(), hidden)
    torch.testing.assert_close(ours, reference.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
