"""The training loss: cross-entropy against label-smoothed targets (section 5.4 of the paper).

Shape legend: N target positions (B·T, padding included), V target vocabulary.

The model is trained to predict q = (1 − ε)·one-hot(y) + ε/V rather than the one-hot target
y, so that it does not grow over-confident:

    loss = Σ_t −Σ_v q_v log p_v = Σ_t (1 − ε)·(−log p_y) + ε/V·(−Σ_v log p_v)

summed over the non-padding positions. Its gradient with respect to the logits is simply
p − q. `label_smoothed_loss` computes exactly this with one float32 (N, V) buffer: the
log-probabilities, which the backward pass turns into p − q in place. (PyTorch's
`F.cross_entropy(label_smoothing=ε)` gives the same numbers, tested, but keeps more (N, V)
tensors alive: a float32 copy of low-precision logits, and the gradient of each term.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def label_smoothed_loss(logits: Tensor, target: Tensor, smoothing: float, pad_id: int) -> Tensor:
    """Summed cross-entropy of logits (B, T, V) against label-smoothed targets (B, T).

    Positions whose target is `pad_id` are left out. Returns a float32 scalar: a sum, which
    callers divide by the number of target tokens.
    """
    flat_logits = logits.reshape(-1, logits.size(-1))  # (N, V)
    return _LabelSmoothedCrossEntropy.apply(flat_logits, target.reshape(-1), smoothing, pad_id)


class _LabelSmoothedCrossEntropy(torch.autograd.Function):
    """Forward: the loss from log_softmax in float32. Backward: p − q in that same buffer."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, target: Tensor, smoothing: float, pad_id: int
    ) -> Tensor:
        V = logits.size(-1)
        log_probs = logits.log_softmax(dim=-1, dtype=torch.float32)  # (N, V), the one buffer
        keep = target != pad_id  # (N,)
        safe_target = target.masked_fill(~keep, 0)  # a valid index for the gather
        nll = -log_probs.gather(1, safe_target[:, None]).squeeze(1)  # (N,) −log p_y
        spread = -log_probs.sum(dim=-1)  # (N,) −Σ_v log p_v
        per_position = (1.0 - smoothing) * nll + (smoothing / V) * spread  # (N,)
        ctx.save_for_backward(log_probs, safe_target, keep)
        ctx.smoothing, ctx.logits_dtype = smoothing, logits.dtype
        return per_position.masked_fill(~keep, 0.0).sum()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        log_probs, target, keep = ctx.saved_tensors
        smoothing = ctx.smoothing
        V = log_probs.size(-1)
        gradient = log_probs.exp_()  # (N, V): p, in the log-probabilities' buffer
        gradient.sub_(smoothing / V)  # p − ε/V
        gradient.scatter_add_(  # p − ε/V − (1 − ε)·one-hot(y) = p − q
            1, target[:, None], torch.full_like(log_probs[:, :1], -(1.0 - smoothing))
        )
        gradient.mul_((grad * keep)[:, None])  # padding positions get no gradient
        return gradient.to(ctx.logits_dtype), None, None, None
