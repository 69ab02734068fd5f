"""Linear layers: y = x Wᵀ + b, the paper's projections (W^Q, W^K, W^V, W^O, W_1, W_2, W_out).

x: (..., d_in), W: (d_out, d_in), b: (d_out,) -> y: (..., d_out).

`F.linear` is the reference. On a CPU PyTorch computes its float32 products with MKL's
sgemm; PyTorch also ships oneDNN, whose float32 products of a training step's shapes are
faster on the AMD EPYC (Zen 4) we measure on: 4,096 rows × 256 → 1,024 at 170–185 GFLOP/s
on two cores against MKL's 100–130, the output layer's 256 rows × 256 → 8,000 at 175
against 106. `onednn_linear` is that fast path, in float32 (IEEE products, not bf16 or
tf32 ones): the product and the gradient of x go through oneDNN, the gradient of W (a long
sum over the rows, where MKL is as fast) through MKL. Tests prove it equal to `F.linear`,
forward and backward.

oneDNN compiles kernels for every shape it multiplies and keeps them (about 0.6 MB each,
up to 1,024), and the memory they take between a step's tensors is not given back: fed the
ever-changing row counts of a training run (B·T), the heap grew by 2 GB in 140 steps. So
oneDNN only multiplies the first multiple of ROW_STEP rows and MKL the rest (fewer than
ROW_STEP): a batch of 4,096 tokens meets at most 16 shapes per layer, and memory stays
flat. Only training takes this path (`onednn_linear_pays`), for products of at least
MIN_ROWS rows or a multiple of ROW_STEP; decoding's products are small and their row
counts change at every step. `python scripts/benchmark_linear.py` prints both
libraries' speed at the model's shapes.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    for MKL, the two calls cost more than oneDNN saves (`scripts/benchmark_linear.py`)."""
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


def _onednn_matmul(rows: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """oneDNN's x Wᵀ + b: (N, d_in), (d_out, d_in), (d_out,) -> (N, d_out)."""
    return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")


def _onednn_product(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x Wᵀ + b: (..., d_in), (d_out, d_in), (d_out,) -> (..., d_out). The first multiple of
    ROW_STEP rows by oneDNN, the rest (fewer than ROW_STEP) by MKL: oneDNN compiles and keeps
    kernels for each number of rows it meets, so this bounds them to a few per layer."""
    rows = x.reshape(-1, x.size(-1))  # (N, d_in)
    main = rows.size(0) - rows.size(0) % ROW_STEP
    if main == 0:
        return F.linear(x, weight, bias)
    y = _onednn_matmul(rows[:main], weight, bias)  # (main, d_out)
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


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, initialisation and state-dict keys) computed by `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features)."""
        return linear(x, self.weight, self.bias)
