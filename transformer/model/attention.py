"""Masks, scaled dot-product attention and multi-head attention.

Shape legend: N query rows, B key rows (N = B, but for the beams of a sentence, which read its
one row of encoder output), H heads, H_kv key/value heads, Tq query length, Tk key length,
D d_model, d_k = D / H.
Mask convention: boolean, True = "may attend", broadcastable to (N, H, Tq, Tk).

`scaled_dot_product_attention` is the paper's formula, written out: the source of the
attention weights that `transformer-explain` draws. `ScaledDotProductAttention`, the layer
each multi-head attention holds, computes it that way when the weights are asked for, and
otherwise by PyTorch's fused `F.scaled_dot_product_attention`, the same formula in one kernel
(tests prove the two equal). Faster paths for a CPU and for beams replace that layer when the
model is built (`transformer.model.fast`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer.model.cache import KVCache
from transformer.model.positions import RotaryPositionalEncoding
from transformer.model.spec import LayerSpec

EVERY_OUTPUT = slice(None)  # all of a stacked projection's outputs: Q, K and V


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


def repeat_kv_heads(x: Tensor, num_heads: int) -> Tensor:
    """Grouped-query attention: (B, H_kv, T, d_k) -> (B, H, T, d_k), each key/value head
    repeated for the H / H_kv query heads of its group (query head h reads K/V head
    h // (H / H_kv)). With H_kv = H, x itself."""
    return x if x.size(1) == num_heads else x.repeat_interleave(num_heads // x.size(1), dim=1)


def attention_scores(q: Tensor, k: Tensor) -> Tensor:
    """Q Kᵀ / √d_k, how well each query matches each key: (N, H, Tq, d_k), (N, H_kv, Tk, d_k)
    -> (N, H, Tq, Tk). Dividing by √d_k keeps the scores' spread from growing with d_k."""
    return q @ repeat_kv_heads(k, q.size(1)).transpose(-2, -1) / math.sqrt(q.size(-1))


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    dropout: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V, written out; returns (output, weights).

    q: (N, H, Tq, d_k), k and v: (N, H_kv, Tk, d_k) (H_kv = H but with grouped-query
    attention), mask broadcastable to (N, H, Tq, Tk). Masked scores get the most negative
    finite value before the softmax and zero weight after it, so a row with every key masked
    gives a zero output rather than NaN (as the fused kernel). `dropout` (a layer: it acts in
    training only) applies to the weights that multiply V; the weights returned are before it.
    """
    scores = attention_scores(q, k)  # (N, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)  # (N, H, Tq, Tk), each row sums to 1 over allowed keys
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    dropped = weights if dropout is None else dropout(weights)
    return dropped @ repeat_kv_heads(v, q.size(1)), weights  # (N, H, Tq, d_k), (N, H, Tq, Tk)


def fused_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0
) -> Tensor:
    """The same attention through PyTorch's fused `F.scaled_dot_product_attention` (whose
    grouped-query mode reads each K/V head for its group without copying it): (N, H, Tq, d_k)."""
    grouped = k.size(1) != q.size(1)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=grouped
    )


def repeat_key_rows(
    rows: int, k: Tensor, v: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Keys, values and mask for `rows` = G·B query rows, where query row r reads key row
    r // G (the beams of a sentence read its encoder output): (B, H_kv, Tk, d_k) -> (rows,
    H_kv, Tk, d_k), each key row repeated G times; a mask with a row per key row follows."""
    B = k.size(0)
    if rows == B:
        return k, v, mask
    if rows % B:
        raise ValueError(
            f"{rows} query rows cannot share {B} rows of keys: the query rows must be a "
            "multiple of the key rows"
        )
    G = rows // B
    if mask is not None and mask.dim() == 4 and mask.size(0) == B:
        mask = mask.repeat_interleave(G, dim=0)  # (rows, 1, Tq or 1, Tk)
    return k.repeat_interleave(G, dim=0), v.repeat_interleave(G, dim=0), mask


class ScaledDotProductAttention(nn.Module):
    """softmax(Q Kᵀ / √d_k) V for every head at once, with dropout on the weights (training).

    Written out when the weights are asked for; otherwise by the fused kernel, which computes
    the same without keeping the (N, H, Tq, Tk) weights.
    """

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """q (N, H, Tq, d_k); k, v (B, H_kv, Tk, d_k), B = N or a divisor of N (see
        `repeat_key_rows`) -> output (N, H, Tq, d_k) and, with `need_weights`, the weights
        (N, H, Tq, Tk); else None."""
        k, v, mask = repeat_key_rows(q.size(0), k, v, mask)  # (N, H_kv, Tk, d_k)
        if need_weights:
            return scaled_dot_product_attention(q, k, v, mask, self.dropout)
        dropout_p = self.dropout.p if self.training else 0.0
        return fused_attention(q, k, v, mask, dropout_p), None


class QKVProjection(nn.Linear):
    """W^Q, W^K, W^V (and their biases) stacked in one linear layer: outputs Q, then K, then V.

    Self-attention projects its input by all three in one product; cross-attention projects
    the decoder's queries by the W^Q outputs and the encoder output by the W^K, W^V outputs.
    """

    def __init__(self, d_model: int, kv_dim: int) -> None:
        super().__init__(d_model, d_model + 2 * kv_dim)
        self.q_outputs = slice(0, d_model)  # W^Q
        self.kv_outputs = slice(d_model, None)  # W^K, then W^V

    def forward(self, x: Tensor, outputs: slice = EVERY_OUTPUT) -> Tensor:
        """x W[outputs]ᵀ + b[outputs]: (..., D) -> (..., the outputs' width)."""
        return F.linear(x, self.weight[outputs], self.bias[outputs])


class AttentionRecorder:
    """The attention weights (N, H, Tq, Tk) of each `MultiHeadAttention` a pass went through.

    Pass one to `Transformer`'s encoder, decoder or layers to have the weights computed by the
    written-out formula and kept here; `recorder[layer.self_attn]` is the last weights that
    attention computed.
    """

    def __init__(self) -> None:
        self._weights: dict[MultiHeadAttention, Tensor] = {}

    def record(self, attention: MultiHeadAttention, weights: Tensor) -> None:
        """Keep `attention`'s weights (N, H, Tq, Tk), in place of any it recorded before."""
        self._weights[attention] = weights

    def __getitem__(self, attention: MultiHeadAttention) -> Tensor:
        return self._weights[attention]


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O,
    head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    The h heads' projections side by side are one D x D matrix each (W^Q = [W_1^Q ... W_h^Q]),
    and the three are stored stacked in one linear layer, `qkv_proj`. `out_proj` is W^O.

    One class serves the three attentions of the model, asked for by name:
    `self_attention(x)` is MultiHead(x, x, x), in the encoder (padding mask) and, masked, in
    the decoder (causal mask); `cross_attention(y, m)` is MultiHead(y, m, m), the decoder's
    queries over the encoder output m.

    Two switches of later models (in the spec): `num_kv_heads` < `num_heads` gives
    grouped-query attention (the query heads share K/V heads in groups; 1 = multi-query),
    which shrinks W^K, W^V and the decoding cache by num_heads / num_kv_heads; `rope` rotates
    the queries and keys of self-attention by their positions.
    """

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.qkv_proj = QKVProjection(spec.d_model, spec.kv_dim)  # [W^Q | W^K | W^V], biases
        self.out_proj = nn.Linear(spec.d_model, spec.d_model)  # W^O
        self.attention = ScaledDotProductAttention(spec.attention_dropout)
        self.rotary = RotaryPositionalEncoding(spec.d_k) if spec.rope else None
        self.register_load_state_dict_pre_hook(_fuse_separate_projections)

    def self_attention(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        recorder: AttentionRecorder | None = None,
    ) -> Tensor:
        """MultiHead(x, x, x): each position of x (N, T, D) attends the positions of x -> (N, T, D).

        `mask` broadcasts to (N, H, T, T_all). With a `cache` (incremental decoding), x holds
        the new positions only: their keys and values are appended to the cache, and they
        attend all T_all = T_cached + T positions. A `recorder` keeps the weights.
        """
        q, k, v = self.project_self(x, cache)
        return self.attend(q, k, v, mask, recorder)

    def cross_attention(
        self,
        x: Tensor,
        memory: Tensor | None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        recorder: AttentionRecorder | None = None,
    ) -> Tensor:
        """MultiHead(x, m, m): each position of x (N, T, D) attends the memory m (B, S, D)
        -> (N, T, D).

        Each of m's B rows serves N / B consecutive rows of x (the beams of a sentence).
        `mask` broadcasts to (B, H, T, S). With a `cache`, m's keys and values are computed
        at the first step and kept; later steps read them from the cache (`memory` may then
        be None). A `recorder` keeps the weights.
        """
        q, k, v = self.project_cross(x, memory, cache)
        return self.attend(q, k, v, mask, recorder)

    def project_self(
        self, x: Tensor, cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Q, K, V = x W^Q, x W^K, x W^V in one product, split into heads: (N, H, T, d_k) and
        two (N, H_kv, T_all, d_k).

        With rotary positions, Q and K are rotated as the positions after the cached ones;
        with a cache, the new keys and values are appended to it and all of them returned.
        """
        D, kv = self.spec.d_model, self.spec.kv_dim
        q, k, v = (self.split_heads(t) for t in self.qkv_proj(x).split([D, kv, kv], dim=-1))
        if self.rotary is not None:  # RoPE: rotate by the positions, after the cached ones
            offset = 0 if cache is None else cache.next_position  # int, or (N,) per row
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        if cache is not None:
            k, v = cache.append(k, v)  # (N, H_kv, T_cached + T, d_k)
        return q, k, v

    def project_cross(
        self, x: Tensor, memory: Tensor | None, cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Q = x W^Q (N, H, T, d_k); K, V = m W^K, m W^V (B, H_kv, S, d_k), projected once:
        with a cache, at the first step, and read from the cache afterwards."""
        q = self.split_heads(self.qkv_proj(x, self.qkv_proj.q_outputs))  # (N, H, T, d_k)
        if cache is not None and cache.kept:
            return q, cache.k, cache.v  # (B, H_kv, S, d_k): projected at the first step
        if memory is None:
            raise ValueError("cross-attention needs the encoder output until its cache holds it")
        k, v = self.project_memory(memory)  # (B, H_kv, S, d_k) each
        if cache is not None:
            k, v = cache.keep(k, v)
        return q, k, v

    def project_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """K, V = m W^K, m W^V of the encoder output m (B, S, D): (B, H_kv, S, d_k) each."""
        kv = self.qkv_proj(memory, self.qkv_proj.kv_outputs)  # (B, S, 2·kv_dim)
        k, v = (self.split_heads(t) for t in kv.chunk(2, dim=-1))
        return k, v

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        recorder: AttentionRecorder | None = None,
    ) -> Tensor:
        """Concat(head_1, ..., head_h) W^O of the projected q (N, H, Tq, d_k), k, v: (N, Tq, D)."""
        heads, weights = self.attention(q, k, v, mask, need_weights=recorder is not None)
        if recorder is not None:
            recorder.record(self, weights)  # (N, H, Tq, Tk)
        return self.out_proj(self.merge_heads(heads))  # (N, Tq, D)

    def split_heads(self, x: Tensor) -> Tensor:
        """(N, T, heads·d_k) -> (N, heads, T, d_k): head i reads features i·d_k .. (i+1)·d_k - 1."""
        N, T, width = x.shape
        d_k = self.spec.d_k
        return x.view(N, T, width // d_k, d_k).transpose(1, 2)

    def merge_heads(self, heads: Tensor) -> Tensor:
        """Concat(head_1, ..., head_h): (N, H, T, d_k) -> (N, T, D), the inverse of split_heads."""
        N, _, T, _ = heads.shape
        return heads.transpose(1, 2).reshape(N, T, self.spec.d_model)


def _fuse_separate_projections(
    module: nn.Module, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any
) -> None:
    """Load checkpoints written before W^Q, W^K, W^V were stored stacked (q_proj, k_proj,
    v_proj): their weights and biases are stacked into `qkv_proj` as they are loaded."""
    old = [f"{prefix}{name}_proj" for name in ("q", "k", "v")]
    if f"{old[0]}.weight" not in state_dict:
        return
    for part in ("weight", "bias"):
        state_dict[f"{prefix}qkv_proj.{part}"] = torch.cat(  # type: ignore[index]
            [state_dict.pop(f"{name}.{part}") for name in old]  # type: ignore[attr-defined]
        )
