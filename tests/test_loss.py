"""The label-smoothed loss: PyTorch's cross-entropy numbers and gradients, with less memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transformer.loss import label_smoothed_loss

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
