"""Dropout: Dropout(x) = x ⊙ m / (1 − p), each m_i ~ Bernoulli(1 − p), during training only.

Each value is zeroed with probability p and the survivors are scaled by 1 / (1 − p), so the
expected output is the input; at evaluation Dropout(x) = x. The paper applies it to each
sublayer's output before Add & Norm and to the sums of embeddings and positions (P_drop 0.1).

PyTorch's `F.dropout` is the reference. On a CPU it draws one random number per value, and
that drawing costs more than all the rest of the dropout, forward and backward (7 ms for a
batch of 4,096 tokens × 256 features, 6% of a training step of the paper's small model on
two cores). `keyed_dropout_mask` draws the same Bernoulli mask from a quarter of the random
words: each 64-bit word gives four 16-bit keys, and a value is dropped when its key falls
in the lowest p·65,536 of the 65,536 keys (p rounded to a multiple of 1/65,536, within
8·10⁻⁶). Tests check its statistics against p and that it draws from the seeded generator,
so that runs stay reproducible and resumable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KEYS = 1 << 16  # 16-bit keys: four per random 64-bit word


def keyed_dropout_mask(like: Tensor, p: float) -> Tensor:
    """A mask shaped like `like`: 0 with probability p, else 1 / (1 − p) (0 ≤ p < 1)."""
    n = like.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=like.device)
    words.random_(-(1 << 63), None)  # every bit uniform (the default range leaves the top one 0)
    keys = words.view(torch.int16)[:n].view(like.shape)  # (like's shape), uniform on ±2¹⁵
    dropped_below = round(p * KEYS) - KEYS // 2  # the lowest p·2¹⁶ keys are dropped
    return (keys >= dropped_below).to(like.dtype).mul_(1.0 / (1.0 - p))


def keyed_mask_pays(x: Tensor) -> bool:
    """Whether `keyed_dropout_mask` beats `F.dropout` for x: on a CPU, where drawing the random
    numbers dominates; a GPU's fused dropout kernel is faster than the three steps here."""
    return x.device.type == "cpu"


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout(x) during training, x otherwise: (...) -> (...)."""
    if not training or p == 0.0:
        return x
    if p >= 1.0 or not keyed_mask_pays(x):
        return F.dropout(x, p, training=True)
    with torch.no_grad():
        mask = keyed_dropout_mask(x, p)  # a constant: the backward pass is grad ⊙ mask
    return x * mask


class Dropout(nn.Module):
    """`dropout` as a layer (active in training mode), a drop-in for `nn.Dropout`."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """(...) -> (...)."""
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
