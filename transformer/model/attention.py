"""Masks, scaled dot-product attention and multi-head attention.

Shape legend: B batch, H heads, Tq query length, Tk key length, D d_model, d_k = D / H.
Mask convention: boolean, True = "may attend", broadcastable to (B, H, Tq, Tk).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def padding_mask(ids: Tensor, pad_id: int) -> Tensor:
    """Keys that are real tokens: (B, S) ids -> (B, 1, 1, S) bool, True where ids != pad_id."""
    return (ids != pad_id)[:, None, None, :]


def causal_mask(query_len: int, key_len: int, device: torch.device | None = None) -> Tensor:
    """Query i may attend key j iff j <= i + (key_len - query_len): (Tq, Tk) bool.

    With a cache, the Tq new queries are the last Tq positions of a Tk-long sequence, so the
    diagonal is shifted by the number of cached positions.
    """
    offset = key_len - query_len
    return torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(diagonal=offset)


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> tuple[Tensor, Tensor]:
    """Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V, written out; returns (output, weights).

    q: (B, H, Tq, d_k), k and v: (B, H, Tk, d_k), mask broadcastable to (B, H, Tq, Tk).
    Masked scores get the most negative finite value before the softmax and zero weight after
    it, so a row with every key masked gives a zero output rather than NaN (as the fused path).
    """
    d_k = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)  # (B, H, Tq, Tk)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    if dropout > 0.0 and training:
        weights = F.dropout(weights, p=dropout)
    return weights @ v, weights  # (B, H, Tq, d_k), (B, H, Tq, Tk)


def fast_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float, training: bool
) -> Tensor:
    """The same attention through PyTorch's fused `F.scaled_dot_product_attention`."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout if training else 0.0
    )  # (B, H, Tq, d_k)


def _worth_fusing(x: Tensor, d_model: int) -> bool:
    """Whether projecting `x` (..., D) through concatenated weights beats separate matmuls.

    Concatenating copies the weights on every call; one wide matmul repays that only for
    many rows (training, encoding), not for the few rows of a decoding step.
    """
    return x.numel() // d_model >= d_model


def _fused_linear(x: Tensor, *linears: nn.Linear) -> tuple[Tensor, ...]:
    """Several nn.Linear of the same input in one matmul: (..., D) -> one (..., D) per layer."""
    weight = torch.cat([linear.weight for linear in linears])  # (n * D, D)
    bias = torch.cat([linear.bias for linear in linears])  # (n * D,)
    return F.linear(x, weight, bias).chunk(len(linears), dim=-1)


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K,
    V W_i^V).

    One class for encoder self-attention, causal decoder self-attention and cross-attention.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.d_model = d_model
        self.num_heads = num_heads
        self.d_k = d_model // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, H, T, d_k)."""
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.d_k).transpose(1, 2)

    def project_query(self, query: Tensor) -> Tensor:
        """Q W^Q split into heads: (B, Tq, D) -> (B, H, Tq, d_k)."""
        return self.split_heads(self.q_proj(query))

    def project_key_value(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """K W^K and V W^V split into heads: (B, Tk, D) -> two (B, H, Tk, d_k)."""
        if key is value and _worth_fusing(key, self.d_model):
            k, v = _fused_linear(key, self.k_proj, self.v_proj)  # (B, Tk, D) each
        else:
            k, v = self.k_proj(key), self.v_proj(value)
        return self.split_heads(k), self.split_heads(v)

    def project_self(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Q, K, V of self-attention (one matmul for many rows): (B, T, D) -> 3 x (B, H, T, d_k)."""
        if _worth_fusing(x, self.d_model):
            q, k, v = _fused_linear(x, self.q_proj, self.k_proj, self.v_proj)  # (B, T, D) each
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.split_heads(q), self.split_heads(k), self.split_heads(v)

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Attention over projected heads, then W^O: -> (B, Tq, D) and optional weights."""
        B, _, Tq, _ = q.shape
        # A few queries per row (incremental decoding: one per row, or one per beam when
        # beams share keys) on a CPU: the fused kernel's fixed cost outweighs the two small
        # matmuls of the written-out form, several times over.
        few_queries_on_cpu = Tq <= 16 and q.device.type == "cpu" and not self.training
        if need_weights or few_queries_on_cpu:
            out, weights = scaled_dot_product_attention(q, k, v, mask, self.dropout, self.training)
        else:
            out, weights = fast_attention(q, k, v, mask, self.dropout, self.training), None
        out = out.transpose(1, 2).reshape(B, Tq, self.d_model)  # (B, Tq, D)
        return self.out_proj(out), weights

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """(B, Tq, D), (B, Tk, D), (B, Tk, D) -> (B, Tq, D) [, weights (B, H, Tq, Tk)]."""
        if query.size(0) != key.size(0) or key.shape[:2] != value.shape[:2]:
            raise ValueError(
                f"attention inputs disagree: query {tuple(query.shape)}, key "
                f"{tuple(key.shape)}, value {tuple(value.shape)}"
            )
        if query is key and key is value:
            q, k, v = self.project_self(query)
        else:
            q = self.project_query(query)
            k, v = self.project_key_value(key, value)
        out, weights = self.attend(q, k, v, mask, need_weights)
        return (out, weights) if need_weights else out
