"""The label-smoothed loss: PyTorch's cross-entropy numbers and gradients, with less memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transformer.config import ModelConfig
from transformer.model import build_model
from transformer.training import loss as loss_module
from transformer.training.loss import (
    TranslationLoss,
    label_smoothed_loss,
    projected_label_smoothed_loss,
)

PAD = 0


def batch(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 11, generator=g) * 3).to(dtype).requires_grad_()
    target = torch.randint(1, 11, (3, 5), generator=g)
    target[1, 3:] = PAD  # padding positions
    target[2, 1:] = PAD
    return logits, target


def reference(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),
        target.reshape(-1),
        ignore_index=PAD,
        label_smoothing=smoothing,
        reduction="sum",
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_loss_and_gradient_equal_pytorch_cross_entropy(smoothing: float) -> None:
    ours_logits, target = batch()
    theirs_logits = ours_logits.detach().clone().requires_grad_()
    ours = label_smoothed_loss(ours_logits, target, smoothing, PAD)
    theirs = reference(theirs_logits, target, smoothing)
    torch.testing.assert_close(ours, theirs)
    (ours * 0.7).backward()
    (theirs * 0.7).backward()
    torch.testing.assert_close(ours_logits.grad, theirs_logits.grad)


def test_the_gradient_is_p_minus_the_smoothed_target_and_zero_on_padding() -> None:
    logits, target = batch()
    label_smoothed_loss(logits, target, 0.1, PAD).backward()
    p = logits.detach().softmax(-1)
    q = torch.full_like(p, 0.1 / 11)
    q.scatter_add_(2, target[..., None], torch.full_like(p[..., :1], 0.9))
    expected = (p - q) * (target != PAD)[..., None]
    torch.testing.assert_close(logits.grad, expected)
    assert (logits.grad[target == PAD] == 0).all()


def test_bfloat16_logits_give_a_float32_loss_close_to_the_float32_one() -> None:
    logits, target = batch(torch.bfloat16)
    loss = label_smoothed_loss(logits, target, 0.1, PAD)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference(logits.detach(), target, 0.1))
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16


def test_a_batch_of_padding_only_has_zero_loss_and_gradient() -> None:
    logits = torch.randn(2, 3, 7, requires_grad=True)
    loss = label_smoothed_loss(logits, torch.zeros(2, 3, dtype=torch.long), 0.1, PAD)
    loss.backward()
    assert loss.item() == 0.0 and (logits.grad == 0).all()


def projected_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    states = torch.randn(3, 5, 8, generator=g).requires_grad_()
    weight = torch.randn(11, 8, generator=g).requires_grad_()
    target = torch.randint(1, 11, (3, 5), generator=g)
    target[1, 3:] = PAD
    target[2, 1:] = PAD
    return states, weight, target


@pytest.mark.parametrize("block", [1, 2, 100])
def test_the_projected_loss_and_its_gradients_equal_projecting_first(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loss_module, "rows_per_block", lambda vocab_size: block)
    states, weight, target = projected_batch()
    reference_loss = label_smoothed_loss(states @ weight.t(), target, 0.1, PAD)
    (reference_loss * 0.7).backward()
    expected = states.grad.clone(), weight.grad.clone()
    states.grad = weight.grad = None
    loss = projected_label_smoothed_loss(states, weight, target, 0.1, PAD)
    (loss * 0.7).backward()
    torch.testing.assert_close(loss, reference_loss)
    torch.testing.assert_close(states.grad, expected[0])
    torch.testing.assert_close(weight.grad, expected[1])
    assert (states.grad[target == PAD] == 0).all()


def test_the_projected_loss_of_padding_only_is_zero_with_zero_gradients() -> None:
    states, weight, target = projected_batch()
    loss = projected_label_smoothed_loss(states, weight, torch.zeros_like(target), 0.1, PAD)
    loss.backward()
    assert loss.item() == 0.0 and (states.grad == 0).all() and (weight.grad == 0).all()


def test_the_projected_loss_without_gradients_is_the_same_number() -> None:
    states, weight, target = projected_batch()
    with torch.no_grad():
        loss = projected_label_smoothed_loss(states, weight, target, 0.1, PAD)
    torch.testing.assert_close(loss, label_smoothed_loss(states @ weight.t(), target, 0.1, PAD))


def test_under_bfloat16_autocast_the_projected_loss_stays_float32_and_close() -> None:
    states, weight, target = projected_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = projected_label_smoothed_loss(states, weight, target, 0.1, PAD)
    loss.backward()
    assert loss.dtype == states.grad.dtype == weight.grad.dtype == torch.float32
    reference_loss = label_smoothed_loss(states @ weight.t(), target, 0.1, PAD)
    torch.testing.assert_close(loss, reference_loss, rtol=2e-2, atol=0.0)


@pytest.mark.parametrize("fast", [True, False])
def test_the_training_objective_equals_the_loss_of_the_models_logits(
    fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(6)
    config = ModelConfig(src_vocab_size=13, tgt_vocab_size=11, d_model=8, num_heads=2, d_ff=16,
                         num_encoder_layers=1, num_decoder_layers=1, dropout=0.0)  # fmt: skip
    model = build_model(config, fast).train()
    src = torch.tensor([[5, 6, 7, 3], [8, 9, 3, PAD]])
    tgt_in = torch.tensor([[2, 5, 6], [2, 7, PAD]])
    tgt_out = torch.tensor([[5, 6, 3], [7, 3, PAD]])
    label_smoothed_loss(model(src, tgt_in), tgt_out, 0.1, PAD).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    projected = []  # whether the objective took the blocked projection (the fast path)
    blocked = loss_module.projected_label_smoothed_loss
    monkeypatch.setattr(
        loss_module,
        "projected_label_smoothed_loss",
        lambda *args: projected.append(True) or blocked(*args),
    )
    TranslationLoss(model, 0.1, PAD, fast=fast)(src, tgt_in, tgt_out).backward()
    assert projected == ([True] if fast else [])
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], msg=name)
