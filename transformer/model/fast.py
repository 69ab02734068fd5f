"""The fast paths: every speed trick of the model, in one place, each proven equal to the paper.

The model in this package is the paper's formulas in PyTorch's plain layers: `nn.Linear`,
`nn.Dropout` and `ScaledDotProductAttention`. Each trick here is a subclass of one of those
layers, with the same parameters and the same numbers, that decides for itself where it pays
(device, dtype, rows) and otherwise does what its parent does. `install_fast_paths` swaps a
built model's layers to them (`build_model(config)`; `build_model(config, fast=False)` and
`training.fast: false` leave the paper's layers). Only the classes change, so the state dict
is the same either way; `tests/test_fast_paths.py` runs the whole model both ways on the same
weights (logits, loss, gradients, greedy and beam search).

1. Linear products through oneDNN (`FastLinear`, `FastQKVProjection`). On a CPU PyTorch
   computes float32 products with MKL's sgemm; PyTorch also ships oneDNN, whose float32
   products of a training step's shapes are faster on the AMD EPYC (Zen 4) we measure on:
   4,096 rows × 256 → 1,024 at 170–185 GFLOP/s on two cores against MKL's 100–130, the output
   layer's 256 rows × 256 → 8,000 at 175 against 106 (`python -m benchmarks.linear`).
   `onednn_linear` computes x Wᵀ + b in float32 (IEEE products, not bf16 or tf32 ones): the
   product and the gradient of x through oneDNN, the gradient of W (a long sum over the rows,
   where MKL is as fast) through MKL. oneDNN compiles kernels for every shape it multiplies
   and keeps them (about 0.6 MB each, up to 1,024), and the memory they take between a step's
   tensors is not given back: fed the ever-changing row counts of a training run (B·T), the
   heap grew by 2 GB in 140 steps. So oneDNN only multiplies the first multiple of ROW_STEP
   rows and MKL the rest: a batch of 4,096 tokens meets at most 16 shapes per layer, and
   memory stays flat. Only training takes this path (`onednn_linear_pays`), for products of
   at least MIN_ROWS rows or a multiple of ROW_STEP; decoding's products are small and their
   row counts change at every step. Proven equal to `F.linear`, forward and backward:
   tests/test_linear.py.

2. Dropout masks from 16-bit keys (`KeyedDropout`). On a CPU `F.dropout` draws one random
   number per value, and that drawing costs more than all the rest of the dropout, forward
   and backward (7 ms for a batch of 4,096 tokens × 256 features, 6% of a training step of
   the paper's small model on two cores). `keyed_dropout_mask` draws the same Bernoulli mask
   from a quarter of the random words: each 64-bit word gives four 16-bit keys, and a value
   is dropped when its key falls in the lowest p·65,536 of the 65,536 keys (p rounded to a
   multiple of 1/65,536, within 8·10⁻⁶). tests/test_dropout.py checks its statistics against
   p and that it draws from the seeded generator, so that runs stay reproducible and
   resumable. (A GPU's fused dropout kernel is faster than the three steps here.)

3. Attention (`FastAttention`). On a CPU the fused kernel works in blocks of queries and
   keys, and its fixed cost per block outweighs the work when there are few keys (Tk ≤ 32:
   forward and backward 1.2–1.9× faster written out at 4,096 tokens a batch on two cores,
   1.0–1.35× on one; `python -m benchmarks.attention`), or few queries at inference
   (a decoding step: one query per hypothesis), several times over: there the written-out
   formula is used (`written_out_is_faster`). And when the G beams of each sentence read its
   one row of encoder output (cross-attention in beam search), the paper's layer repeats the
   keys and values G times; `shared_key_attention` stacks the G beams' queries into one row
   instead, so the keys are multiplied once and never copied. Proven equal to the
   written-out formula: tests/test_attention.py.

Shape legend: N query rows, B key rows, G = N / B, H heads, H_kv key/value heads, Tq query
length, Tk key length, d_k features per head.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer.model.attention import (
    EVERY_OUTPUT,
    QKVProjection,
    ScaledDotProductAttention,
    scaled_dot_product_attention,
)

ModuleT = TypeVar("ModuleT", bound=nn.Module)

# ------------------------------------------------------------------ 1. oneDNN linear products

ROW_STEP = 256  # oneDNN multiplies the first multiple of this many rows
MIN_ROWS = 1024  # ... of products of at least this many rows, or of a multiple of ROW_STEP


@functools.cache
def onednn_available() -> bool:
    """Whether this PyTorch has oneDNN's dense linear kernel (CPU builds for x86 and ARM do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear_pays(x: Tensor, weight: Tensor, training: bool) -> bool:
    """Whether `onednn_linear` should compute x Wᵀ + b: in training (where the products are
    large and their shapes few), float32 on a CPU, outside autocast (which runs F.linear in
    its own dtype) and torch.compile (which picks its own kernels), for MIN_ROWS rows or more,
    or a multiple of ROW_STEP (the training loss's blocks): below that, with rows left over
    for MKL, the two calls cost more than oneDNN saves (`python -m benchmarks.linear`)."""
    rows = x.numel() // max(1, x.size(-1))
    return (
        training
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and (rows >= MIN_ROWS or (rows > 0 and rows % ROW_STEP == 0))
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and onednn_available()
    )


def onednn_matmul(rows: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """oneDNN's x Wᵀ + b: (N, d_in), (d_out, d_in), (d_out,) -> (N, d_out), for any N (the
    kernel alone, as `python -m benchmarks.linear` times it; `onednn_linear` is the layer's)."""
    return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")


def _onednn_product(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x Wᵀ + b: (..., d_in), (d_out, d_in), (d_out,) -> (..., d_out). The first multiple of
    ROW_STEP rows by oneDNN, the rest (fewer than ROW_STEP) by MKL: oneDNN compiles and keeps
    kernels for each number of rows it meets, so this bounds them to a few per layer."""
    rows = x.reshape(-1, x.size(-1))  # (N, d_in)
    main = rows.size(0) - rows.size(0) % ROW_STEP
    if main == 0:
        return F.linear(x, weight, bias)
    y = onednn_matmul(rows[:main], weight, bias)  # (main, d_out)
    if main < rows.size(0):
        y = torch.cat([y, F.linear(rows[main:], weight, bias)])  # (N, d_out)
    return y.view(*x.shape[:-1], weight.size(0))


class _OneDnnLinear(torch.autograd.Function):
    """y = x Wᵀ + b; backward: ∂x = g W (oneDNN), ∂W = gᵀ x (MKL), ∂b = Σ_rows g."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_product(x, weight, bias)  # (..., d_out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.size(-1))  # (N, d_out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_product(g, weight.t(), None).view(x.shape)  # g W: (..., d_in)
        if ctx.needs_input_grad[1]:
            grad_w = g.t() @ x.reshape(-1, x.size(-1))  # gᵀ x: (d_out, d_in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)  # (d_out,)
        return grad_x, grad_w, grad_b


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)` by oneDNN (float32, CPU): (..., d_in) -> (..., d_out)."""
    wants_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if wants_grad:
        return _OneDnnLinear.apply(x, weight, bias)
    return _onednn_product(x, weight, bias)


def linear(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, training: bool | None = None
) -> Tensor:
    """y = x Wᵀ + b: (..., d_in) -> (..., d_out); oneDNN where `onednn_linear_pays`.
    `training` (default: whether autograd records) says whether this is a training step."""
    if onednn_linear_pays(x, weight, torch.is_grad_enabled() if training is None else training):
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


class FastLinear(nn.Linear):
    """`nn.Linear` (same parameters, initialisation and state-dict keys) computed by `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features)."""
        return linear(x, self.weight, self.bias)


class FastQKVProjection(QKVProjection):
    """`QKVProjection` (the stacked W^Q, W^K, W^V) computed by `linear`."""

    def forward(self, x: Tensor, outputs: slice = EVERY_OUTPUT) -> Tensor:
        """x W[outputs]ᵀ + b[outputs]: (..., D) -> (..., the outputs' width)."""
        return linear(x, self.weight[outputs], self.bias[outputs])


# ------------------------------------------------------------------- 2. keyed dropout masks

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


def keyed_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout(x) = x ⊙ m / (1 − p), m_i ~ Bernoulli(1 − p), during training; x otherwise."""
    if not training or p == 0.0:
        return x
    if p >= 1.0 or not keyed_mask_pays(x):
        return F.dropout(x, p, training=True)
    with torch.no_grad():
        mask = keyed_dropout_mask(x, p)  # a constant: the backward pass is grad ⊙ mask
    return x * mask


class KeyedDropout(nn.Dropout):
    """`nn.Dropout` whose masks come from `keyed_dropout_mask` on a CPU."""

    def forward(self, x: Tensor) -> Tensor:
        """(...) -> (...)."""
        return keyed_dropout(x, self.p, self.training)


# ------------------------------------------------------------------------------ 3. attention


def written_out_is_faster(q: Tensor, k: Tensor, training: bool) -> bool:
    """Whether the written-out formula beats the fused kernel for queries q (N, H, Tq, d_k)
    over keys k (N, H_kv, Tk, d_k): on a CPU, for few keys (Tk ≤ 32) or, at inference, few
    queries (Tq ≤ 16; see the module's docstring)."""
    if q.device.type != "cpu":
        return False
    return k.size(-2) <= 32 or (not training and q.size(-2) <= 16)


def masks_keys_only(mask: Tensor | None, key_rows: int) -> bool:
    """Whether `mask` hides keys alike for every query (a padding mask, (B, 1, 1, Tk) or
    (1, 1, 1, Tk)), so that queries from several rows may share one row of it."""
    if mask is None:
        return True
    return mask.size(-2) == 1 and (mask.dim() < 4 or mask.size(0) in (1, key_rows))


class FastAttention(ScaledDotProductAttention):
    """`ScaledDotProductAttention` by the fastest path that gives what is asked for."""

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """q (N, H, Tq, d_k); k, v (B, H_kv, Tk, d_k) -> (N, H, Tq, d_k), weights or None."""
        N, B = q.size(0), k.size(0)
        if N != B and N % B == 0 and masks_keys_only(mask, B):
            return self.shared_key_attention(q, k, v, mask, need_weights)
        if not need_weights and N == B and written_out_is_faster(q, k, self.training):
            return scaled_dot_product_attention(q, k, v, mask, self.dropout)[0], None
        return super().forward(q, k, v, mask, need_weights)

    def shared_key_attention(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Attention of N = G·B query rows over B rows of keys: query row r reads key row r // G.

        The same as repeating each row of k, v and mask G times, without the copies: the G
        query rows of a key row are stacked into one row of G·Tq queries (attention treats
        every query alone, so this changes nothing but the matmul shapes).
        """
        N, H, Tq, d_k = q.shape
        B = k.size(0)
        G = N // B
        stacked = q.view(B, G, H, Tq, d_k).transpose(1, 2).reshape(B, H, G * Tq, d_k)
        out, weights = self.forward(stacked, k, v, mask, need_weights)  # (B, H, G·Tq, d_k)
        out = out.view(B, H, G, Tq, d_k).transpose(1, 2).reshape(N, H, Tq, d_k)
        if weights is not None:
            Tk = weights.size(-1)
            weights = weights.view(B, H, G, Tq, Tk).transpose(1, 2).reshape(N, H, Tq, Tk)
        return out, weights


# ------------------------------------------------------------------------------ the seam

FAST_PATHS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: FastLinear,
    QKVProjection: FastQKVProjection,
    nn.Dropout: KeyedDropout,
    ScaledDotProductAttention: FastAttention,
}  # each paper layer -> its fast subclass (same attributes: only the class is swapped)


def install_fast_paths(model: ModuleT) -> ModuleT:
    """Give each layer of `model` that has a fast path its fast class, in place; returns model.

    The parameters, buffers, hooks and state-dict keys stay as they are, and `isinstance`
    still answers for the paper's layer.
    """
    for module in model.modules():
        fast = FAST_PATHS.get(type(module))
        if fast is not None:
            module.__class__ = fast
    return model
