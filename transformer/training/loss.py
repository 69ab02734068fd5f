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

Training takes a faster path to the same numbers, `projected_label_smoothed_loss`: it starts
from the decoder's output h (N, D) and the output projection W_out (V, D) rather than from
the logits h W_outᵀ, skips the padding positions, and works through blocks of rows whose
logits stay in the processor's cache. Its products with W_out go through the model's fast
`linear` (`transformer.model.fast`: oneDNN on a CPU). `TranslationLoss`, the objective,
takes it when built with `fast=True` (`training.fast`, as the model's fast paths), and
`label_smoothed_loss` of the model's logits otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from transformer.model.fast import ROW_STEP, linear

if TYPE_CHECKING:
    from transformer.model import Transformer


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


class TranslationLoss(nn.Module):
    """The training objective: source, decoder input and target ids -> the summed loss.

    The reference (`fast=False`) is `label_smoothed_loss(model(src, tgt_in), tgt_out, ...)`.
    The fast path gives the same number: the teacher-forced decoder output h goes through
    `projected_label_smoothed_loss` with the output projection W_out. A module, so that
    DistributedDataParallel and torch.compile wrap the whole of it.
    """

    def __init__(
        self, model: Transformer, smoothing: float, pad_id: int, fast: bool = True
    ) -> None:
        super().__init__()
        self.model = model
        self.smoothing = smoothing
        self.pad_id = pad_id
        self.fast = fast

    def forward(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> Tensor:
        """src (B, S), tgt_in (B, T), tgt_out (B, T) -> a float32 scalar, summed over tokens."""
        # The blocked projection multiplies by W_out alone: a model with an output bias b_out
        # (an imported Marian model) takes the plain path, logits = h W_outᵀ + b_out.
        if not self.fast or self.model.output_proj.bias is not None:
            logits = self.model(src, tgt_in)  # (B, T, V)
            return label_smoothed_loss(logits, tgt_out, self.smoothing, self.pad_id)
        states = self.model.teacher_forced_states(src, tgt_in)  # (B, T, D)
        weight = self.model.output_proj.weight  # W_out (V, D)
        return projected_label_smoothed_loss(states, weight, tgt_out, self.smoothing, self.pad_id)


def projected_label_smoothed_loss(
    states: Tensor, weight: Tensor, target: Tensor, smoothing: float, pad_id: int
) -> Tensor:
    """`label_smoothed_loss(states @ weightᵀ, ...)` without the (N, V) logits.

    states (B, T, D): the decoder's output h; weight (V, D): the output projection W_out;
    target (B, T). The fast path of the training step: only the positions whose target is
    not padding are projected, a block of rows at a time, and each block's gradient p − q is
    multiplied into the gradients of h and W_out at once (the loss is the last thing the
    step computes, so they are known in the forward pass; backward only scales them by the
    incoming gradient). The logits of a block stay in the processor's cache, and no (N, V)
    tensor outlives its block. Tests prove the loss and both gradients equal the reference's.
    """
    D = states.size(-1)
    return _ProjectedLabelSmoothedCrossEntropy.apply(
        states.reshape(-1, D), weight, target.reshape(-1), smoothing, pad_id
    )


def rows_per_block(vocab_size: int) -> int:
    """Rows of logits projected at a time: about 2M values (8 MB in float32), which on a CPU
    stay in the last-level cache while they are turned into probabilities and gradients;
    a multiple of `linear`'s ROW_STEP where that many fit (256 rows for an 8k vocabulary)."""
    rows = max(1, (1 << 21) // vocab_size)
    return rows - rows % ROW_STEP if rows >= ROW_STEP else rows


class _ProjectedLabelSmoothedCrossEntropy(torch.autograd.Function):
    """Forward: the loss, and the gradients of h and W_out, block by block. Backward: them,
    scaled. Under autocast the projections run in its dtype, the softmax in float32."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, states: Tensor, weight: Tensor, target: Tensor, smoothing: float, pad_id: int
    ) -> Tensor:
        device = states.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        kept = (target != pad_id).nonzero().squeeze(1)  # (n,) the positions with a target
        h = states.index_select(0, kept)  # (n, D)
        y = target.index_select(0, kept)  # (n,)
        V = weight.size(0)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(device, enabled=False):
            w = weight if dtype is None else weight.to(dtype)  # (V, D)
            h_low = h if dtype is None else h.to(dtype)
            grad_h = torch.empty(h.shape, dtype=w.dtype, device=h.device) if want_h else None
            grad_w = (
                torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
                if want_w
                else None
            )
            total = torch.zeros((), dtype=torch.float32, device=states.device)
            step = rows_per_block(V)
            for start in range(0, h.size(0), step):
                rows = slice(start, start + step)
                log_probs = linear(h_low[rows], w, training=True).log_softmax(
                    -1, dtype=torch.float32
                )  # (r, V)
                nll = -log_probs.gather(1, y[rows, None]).sum()  # Σ −log p_y
                spread = -log_probs.sum()  # Σ −Σ_v log p_v
                total += (1.0 - smoothing) * nll + (smoothing / V) * spread
                if not (want_h or want_w):
                    continue
                gradient = log_probs.exp_().sub_(smoothing / V)  # p − ε/V
                gradient.scatter_add_(  # p − q
                    1, y[rows, None], torch.full_like(gradient[:, :1], -(1.0 - smoothing))
                )
                gradient = gradient.to(w.dtype)
                if want_h:
                    grad_h[rows] = linear(gradient, w.t(), training=True)  # (p − q) W_out: (r, D)
                if want_w and dtype is None:
                    grad_w.addmm_(gradient.t(), h[rows])  # (V, D)
                elif want_w:  # summed in float32, not in the low precision
                    grad_w += (gradient.t() @ h_low[rows]).float()  # (V, D)
        full_grad_h = None  # (N, D): zero at the padding positions
        if want_h:
            full_grad_h = states.new_zeros(states.shape)
            full_grad_h.index_copy_(0, kept, grad_h.to(states.dtype))
        ctx.save_for_backward(full_grad_h, None if grad_w is None else grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        return (
            None if grad_h is None else grad_h * grad,
            None if grad_w is None else grad_w * grad,
            None,
            None,
            None,
        )
