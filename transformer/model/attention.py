"""Masks, scaled dot-product attention and multi-head attention.

Shape legend: B batch, H heads, Tq query length, Tk key length, D d_model, d_k = D / H.
Mask convention: boolean, True = "may attend", broadcastable to (B, H, Tq, Tk).

`scaled_dot_product_attention` is the paper's formula, written out: the reference, and the
source of the attention weights that `transformer-explain` draws. Two fast paths compute the
same thing and are proven equal to it by tests:

- `fused_attention`, PyTorch's fused kernel, when the weights are not asked for
  (`attention` chooses between the two);
- `shared_key_attention`, when several query rows read one row of keys and values (the
  beams of one sentence, which share its encoder output): their queries are stacked so the
  keys are multiplied once, not copied for every beam.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer.model.cache import KVCache
from transformer.model.dropout import dropout as dropout_of
from transformer.model.linear import Linear, linear
from transformer.model.positions import RotaryPositionalEncoding


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
    """Q Kᵀ / √d_k, how well each query matches each key: (B, H, Tq, d_k), (B, H_kv, Tk, d_k)
    -> (B, H, Tq, Tk). Dividing by √d_k keeps the scores' spread from growing with d_k."""
    return q @ repeat_kv_heads(k, q.size(1)).transpose(-2, -1) / math.sqrt(q.size(-1))


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> tuple[Tensor, Tensor]:
    """Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V, written out; returns (output, weights).

    q: (B, H, Tq, d_k), k and v: (B, H_kv, Tk, d_k) (H_kv = H but with grouped-query
    attention), mask broadcastable to (B, H, Tq, Tk). Masked scores get the most negative
    finite value before the softmax and zero weight after it, so a row with every key masked
    gives a zero output rather than NaN (as the fused path).
    """
    scores = attention_scores(q, k)  # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)  # (B, H, Tq, Tk), each row sums to 1 over allowed keys
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    weights = dropout_of(weights, dropout, training)
    return weights @ repeat_kv_heads(v, q.size(1)), weights  # (B, H, Tq, d_k), (B, H, Tq, Tk)


def fused_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float, training: bool
) -> Tensor:
    """The same attention through PyTorch's fused `F.scaled_dot_product_attention` (whose
    grouped-query mode reads each K/V head for its group without copying it)."""
    dropout_p = dropout if training else 0.0
    grouped = k.size(1) != q.size(1)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=grouped
    )  # (B, H, Tq, d_k)


def written_out_is_faster(q: Tensor, k: Tensor, training: bool) -> bool:
    """Whether the written-out formula beats the fused kernel for queries q (B, H, Tq, d_k)
    over keys k (B, H_kv, Tk, d_k).

    On a CPU, for short rows: the fused kernel works in blocks of queries and keys, and its
    fixed cost per block outweighs the work when there are few keys (Tk ≤ 32: forward and
    backward 1.2-1.9× faster written out at 4,096 tokens a batch on two cores, 1.0-1.35× on
    one; see `scripts/benchmark_attention.py`), or few queries at inference (a decoding step:
    one query per hypothesis, or the stacked beams of a sentence), several times over.
    """
    if q.device.type != "cpu":
        return False
    return k.size(-2) <= 32 or (not training and q.size(-2) <= 16)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    dropout: float,
    training: bool,
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """softmax(Q Kᵀ / √d_k) V by the fastest path that gives what is asked for.

    q: (N, H, Tq, d_k); k, v: (B, H_kv, Tk, d_k) where B is N, or divides N (see
    `shared_key_attention`). Returns the output (N, H, Tq, d_k) and, with `need_weights`, the
    weights (N, H, Tq, Tk) of the written-out formula; else None.
    """
    if q.size(0) != k.size(0):
        return shared_key_attention(q, k, v, mask, dropout, training, need_weights)
    if need_weights or written_out_is_faster(q, k, training):
        out, weights = scaled_dot_product_attention(q, k, v, mask, dropout, training)
        return out, weights if need_weights else None
    return fused_attention(q, k, v, mask, dropout, training), None


def shared_key_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    dropout: float,
    training: bool,
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Attention of N = G·B query rows over B rows of keys: query row r reads key row r // G.

    The same as repeating each row of k, v and mask G times, without the copies: the G query
    rows of a key row are stacked into one row of G·Tq queries (attention treats every query
    alone, so this changes nothing but the matmul shapes). The mask may only mask keys:
    (B, 1, 1, Tk), or None. q: (N, H, Tq, d_k), k and v: (B, H_kv, Tk, d_k).
    """
    N, H, Tq, d_k = q.shape
    B = k.size(0)
    if N % B or (mask is not None and (mask.size(0) not in (1, B) or mask.size(-2) != 1)):
        shape = None if mask is None else tuple(mask.shape)
        raise ValueError(
            f"{N} query rows cannot share {B} rows of keys (mask {shape}): the query rows "
            "must be a multiple of the key rows, and the mask must mask keys only"
        )
    G = N // B
    stacked = q.view(B, G, H, Tq, d_k).transpose(1, 2).reshape(B, H, G * Tq, d_k)
    out, weights = attention(stacked, k, v, mask, dropout, training, need_weights)
    out = out.view(B, H, G, Tq, d_k).transpose(1, 2).reshape(N, H, Tq, d_k)
    if weights is not None:
        Tk = weights.size(-1)
        weights = weights.view(B, H, G, Tq, Tk).transpose(1, 2).reshape(N, H, Tq, Tk)
    return out, weights


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O,
    head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    The h heads' projections side by side are one D x D matrix each (W^Q = [W_1^Q ... W_h^Q]),
    and the three are stored stacked in one linear layer, `qkv_proj` (outputs: Q, then K,
    then V), so that self-attention projects its input once. Cross-attention projects the
    decoder's queries with the Q weights and the encoder output with the K and V weights.
    `out_proj` is W^O.

    One class serves the three attentions of the model: encoder self-attention (padding
    mask), masked decoder self-attention (causal mask) and cross-attention (queries from the
    decoder, keys and values from the encoder output).

    Two switches of later models: `num_kv_heads` < `num_heads` gives grouped-query attention
    (the query heads share K/V heads in groups; 1 = multi-query attention), which shrinks W^K,
    W^V and the decoding cache by num_heads / num_kv_heads; `rotary` rotates the queries and
    keys of self-attention by their positions (RoPE).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        dropout: float = 0.0,
        num_kv_heads: int | None = None,
        rotary: RotaryPositionalEncoding | None = None,
    ) -> None:
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        if num_heads % num_kv_heads != 0:
            raise ValueError(
                f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads})"
            )
        self.d_model = d_model
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.d_k = d_model // num_heads
        self.kv_dim = num_kv_heads * self.d_k  # width of K (and of V): D unless grouped
        self.dropout = dropout
        self.qkv_proj = Linear(d_model, d_model + 2 * self.kv_dim)  # [W^Q | W^K | W^V], biases
        self.out_proj = Linear(d_model, d_model)  # W^O
        self.rotary = rotary
        self.register_load_state_dict_pre_hook(_fuse_separate_projections)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, T, heads·d_k) -> (B, heads, T, d_k): head i reads features i·d_k .. (i+1)·d_k - 1."""
        B, T, width = x.shape
        return x.view(B, T, width // self.d_k, self.d_k).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        key_value: Tensor | None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        weights: list[Tensor] | None = None,
    ) -> Tensor:
        """Attend from `query` (B, Tq, D) to `key_value` (B_kv, Tk, D) -> (B, Tq, D).

        Self-attention passes one tensor as both; cross-attention passes the encoder output
        as `key_value`, whose B_kv rows may each serve B / B_kv consecutive query rows (the
        beams of a sentence). `mask` broadcasts to (B, H, Tq, Tk).

        With a `cache` (incremental decoding), self-attention appends the new positions'
        keys and values to it and attends over all of them; cross-attention computes the
        encoder output's keys and values at the first step, keeps them, and reuses them
        afterwards (`key_value` is then not read and may be None).
        With a `weights` list, the attention weights (B, H, Tq, Tk) are appended to it.
        """
        q, k, v = self.project(query, key_value, cache)  # (B, H, Tq, d_k), (B_kv, H, Tk, d_k)
        heads, head_weights = attention(
            q, k, v, mask, self.dropout, self.training, need_weights=weights is not None
        )  # head_i for every i: (B, H, Tq, d_k); weights (B, H, Tq, Tk) or None
        if weights is not None:
            weights.append(head_weights)
        return self.out_proj(self.merge_heads(heads))  # Concat(head_1, ..., head_h) W^O

    def project(
        self, query: Tensor, key_value: Tensor | None, cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Q W^Q, K W^K, V W^V split into heads: (B, H, Tq, d_k) and two (B_kv, H_kv, Tk, d_k).

        Self-attention (`query is key_value`) projects once through the stacked weights and
        appends the new keys/values to the cache; cross-attention projects the queries with
        W^Q and the encoder output with W^K, W^V, once: later steps take them from the cache.
        """
        D, kv = self.d_model, self.kv_dim
        if query is key_value:  # self-attention: Q, K, V = x W^Q, x W^K, x W^V in one matmul
            q, k, v = (self.split_heads(t) for t in self.qkv_proj(query).split([D, kv, kv], -1))
            if self.rotary is not None:  # RoPE: rotate by the positions, after the cached ones
                offset = 0 if cache is None else cache.length
                q, k = self.rotary(q, offset), self.rotary(k, offset)
            if cache is not None:
                k, v = cache.append(k, v)  # (B, H_kv, T_cached + Tq, d_k)
            return q, k, v
        w_q, w_kv = self.qkv_proj.weight.split([D, 2 * kv])  # W^Qᵀ (D, D); W^Kᵀ, W^Vᵀ (2kv, D)
        b_q, b_kv = self.qkv_proj.bias.split([D, 2 * kv])
        q = self.split_heads(linear(query, w_q, b_q))  # (B, H, Tq, d_k)
        if cache is not None and cache.kept:
            return q, cache.k, cache.v  # (B_kv, H_kv, Tk, d_k): projected at the first step
        if key_value is None:
            raise ValueError("cross-attention needs key_value until its cache holds it")
        k, v = (self.split_heads(t) for t in linear(key_value, w_kv, b_kv).chunk(2, dim=-1))
        if cache is not None:
            k, v = cache.keep(k, v)
        return q, k, v

    def merge_heads(self, heads: Tensor) -> Tensor:
        """Concat(head_1, ..., head_h): (B, H, T, d_k) -> (B, T, D), the inverse of split_heads."""
        B, _, T, _ = heads.shape
        return heads.transpose(1, 2).reshape(B, T, self.d_model)


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
