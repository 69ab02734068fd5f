"""Embeddings, positional encodings, feed-forward, Add & Norm, encoder and decoder layers.

Shape legend: B batch, S source length, T target length, D d_model, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer.model.attention import MultiHeadAttention
from transformer.model.cache import KVCache

LayerCaches = tuple[KVCache, KVCache]  # a decoder layer's (self-attention, cross-attention) caches


class Embeddings(nn.Module):
    """Token embeddings multiplied by √d_model, as in section 3.4 of the paper."""

    def __init__(self, vocab_size: int, d_model: int, pad_id: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.scale = math.sqrt(d_model)
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)

    def forward(self, ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, D)."""
        return self.embedding(ids) * self.scale


def sinusoidal_table(positions: Tensor, d_model: int) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(same): (T,) -> (T, D)."""
    two_i = torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float32)  # (⌈D/2⌉,)
    angles = positions.float()[:, None] / torch.pow(10000.0, two_i / d_model)  # (T, ⌈D/2⌉)
    table = torch.empty(positions.numel(), d_model, device=positions.device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return table  # (T, D)


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal positions for any length; no parameters.

    The first `precomputed` positions come from a table made once (a buffer outside the
    state dict), so that a decoding step adds a row instead of computing it; later
    positions are computed when asked for.
    """

    def __init__(self, d_model: int, precomputed: int = 1024) -> None:
        super().__init__()
        self.d_model = d_model
        table = sinusoidal_table(torch.arange(precomputed), d_model)  # (precomputed, D)
        self.register_buffer("table", table, persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """(B, T, D) -> (B, T, D): x plus the encodings of positions offset .. offset+T-1."""
        end = offset + x.size(1)
        if end <= self.table.size(0):
            rows = self.table[offset:end]  # (T, D)
        else:
            rows = sinusoidal_table(torch.arange(offset, end, device=x.device), self.d_model)
        return x + rows.to(x.dtype)


class LearnedPositionalEncoding(nn.Module):
    """A trained embedding per position, up to `max_positions`."""

    def __init__(self, d_model: int, max_positions: int) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.embedding = nn.Embedding(max_positions, d_model)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """(B, T, D) -> (B, T, D): x plus the learned vectors of positions offset .. offset+T-1."""
        end = offset + x.size(1)
        if end > self.max_positions:
            raise ValueError(
                f"sequence of {end} positions exceeds the learned positional encoding's "
                f"max_positions={self.max_positions}; shorten the input or raise "
                "model.max_positions (or use positional_encoding: sinusoidal)"
            )
        positions = torch.arange(offset, end, device=x.device)
        return x + self.embedding(positions)


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (GELU instead of ReLU when chosen)."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu") -> None:
        super().__init__()
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be relu or gelu, got {activation!r}")
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.activation = F.relu if activation == "relu" else F.gelu

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, d_ff) -> (B, T, D)."""
        return self.linear2(self.activation(self.linear1(x)))


class AddNorm(nn.Module):
    """Residual connection around a sublayer, with its LayerNorm.

    post-norm (the paper): LayerNorm(x + Dropout(Sublayer(x)));
    pre-norm:              x + Dropout(Sublayer(LayerNorm(x))).
    """

    def __init__(self, d_model: int, dropout: float, norm_position: str = "post") -> None:
        super().__init__()
        if norm_position not in ("post", "pre"):
            raise ValueError(f"norm_position must be post or pre, got {norm_position!r}")
        self.pre_norm = norm_position == "pre"
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """One encoder layer: self-attention, then the feed-forward network, each with Add & Norm."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation: str = "relu",
        norm_position: str = "post",
    ) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, attention_dropout)
        self.feed_forward = FeedForward(d_model, d_ff, activation)
        self.attn_sublayer = AddNorm(d_model, dropout, norm_position)
        self.ff_sublayer = AddNorm(d_model, dropout, norm_position)

    def forward(
        self, x: Tensor, src_mask: Tensor | None, weights: list[Tensor] | None = None
    ) -> Tensor:
        """(B, S, D) with mask (B, 1, 1, S) -> (B, S, D); attention weights go to `weights`."""
        x = self.attn_sublayer(x, lambda h: self.self_attn(h, h, src_mask, weights=weights))
        return self.ff_sublayer(x, self.feed_forward)


class DecoderLayer(nn.Module):
    """One decoder layer: masked self-attention, cross-attention over the encoder output, then
    the feed-forward network, each with Add & Norm."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation: str = "relu",
        norm_position: str = "post",
    ) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, attention_dropout)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, attention_dropout)
        self.feed_forward = FeedForward(d_model, d_ff, activation)
        self.self_attn_sublayer = AddNorm(d_model, dropout, norm_position)
        self.cross_attn_sublayer = AddNorm(d_model, dropout, norm_position)
        self.ff_sublayer = AddNorm(d_model, dropout, norm_position)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        src_mask: Tensor | None,
        tgt_mask: Tensor | None,
        cache: LayerCaches | None = None,
        self_weights: list[Tensor] | None = None,
        cross_weights: list[Tensor] | None = None,
    ) -> Tensor:
        """(N, T, D) -> (N, T, D), attending to the encoder output `memory` (B, S, D).

        `tgt_mask` (T, T_all) keeps each position from seeing later ones; `src_mask`
        (B, 1, 1, S) hides source padding. `memory`'s rows may each serve N / B consecutive
        rows of `x` (the beams of a sentence). `cache` is this layer's (self, cross) pair of
        `KVCache`s for incremental decoding.
        """
        self_cache, cross_cache = cache if cache is not None else (None, None)
        x = self.self_attn_sublayer(
            x, lambda h: self.self_attn(h, h, tgt_mask, self_cache, self_weights)
        )
        x = self.cross_attn_sublayer(
            x, lambda h: self.cross_attn(h, memory, src_mask, cross_cache, cross_weights)
        )
        return self.ff_sublayer(x, self.feed_forward)
