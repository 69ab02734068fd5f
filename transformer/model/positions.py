"""Where a piece is: the paper's sinusoidal encoding, learned positions, and rotary positions.

Attention compares every query with every key regardless of where they are, so the model is
told positions in one of three ways (`model.positional_encoding`):

- sinusoidal (the paper, section 3.5): a fixed vector per position added to the embeddings;
- learned: a trained vector per position, added the same way, up to `max_positions`;
- rope (rotary, RoFormer): nothing is added; instead each self-attention rotates its queries
  and keys by angles proportional to their positions, so that a query-key score depends on
  the two positions only through their difference.

Shape legend: B batch, H heads, T positions, D d_model, d_k = D / H.

Every encoding places the T positions it is given after an `offset`: one number for every
row, or a tensor (B,) of one per row, for decoder rows that have come different distances
(continuous batching, `transformer.decoding.continuous`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

BASE = 10000.0  # the paper's wavelength base, also RoPE's

Offset = int | Tensor  # the first position: one for all rows, or one per row (B,)


def position_ids(offset: Tensor, length: int) -> Tensor:
    """Per-row offsets (B,) -> the positions (B, T) offset .. offset+T-1 of each row."""
    return offset[:, None] + torch.arange(length, device=offset.device)


LAYOUTS = ("interleaved", "halves")


def sinusoidal_table(positions: Tensor, d_model: int, layout: str = "interleaved") -> Tensor:
    """The paper's sinusoids, (T,) -> (T, D), with ω_i = 1 / 10000^(2i/d_model):

    interleaved (the paper): PE(pos, 2i) = sin(pos ω_i), PE(pos, 2i+1) = cos(pos ω_i);
    halves (Marian, OPUS-MT): PE(pos, i) = sin(pos ω_i), PE(pos, ⌈D/2⌉ + i) = cos(pos ω_i),
    the same values with the sines in the first half of the features, the cosines after.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"positional layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    two_i = torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float32)  # (⌈D/2⌉,)
    angles = positions.float()[:, None] / torch.pow(BASE, two_i / d_model)  # (T, ⌈D/2⌉)
    table = torch.empty(positions.numel(), d_model, device=positions.device)
    if layout == "halves":
        half = angles.size(1)
        table[:, :half] = torch.sin(angles)
        table[:, half:] = torch.cos(angles[:, : d_model // 2])
        return table  # (T, D)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return table  # (T, D)


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal positions for any length; no parameters.

    The first `precomputed` positions come from a table made once (a buffer outside the
    state dict), so that a decoding step adds a row instead of computing it; later
    positions are computed when asked for.
    """

    def __init__(self, d_model: int, precomputed: int = 1024, layout: str = "interleaved") -> None:
        super().__init__()
        self.d_model = d_model
        self.layout = layout
        table = sinusoidal_table(torch.arange(precomputed), d_model, layout)  # (precomputed, D)
        self.register_buffer("table", table, persistent=False)

    def forward(self, x: Tensor, offset: Offset = 0) -> Tensor:
        """(B, T, D) -> (B, T, D): x plus the encodings of positions offset .. offset+T-1."""
        if isinstance(offset, Tensor):  # a first position per row
            positions = position_ids(offset, x.size(1))  # (B, T)
            if int(positions.max()) < self.table.size(0):
                rows = self.table[positions]  # (B, T, D)
            else:
                rows = sinusoidal_table(positions.flatten(), self.d_model, self.layout)
                rows = rows.view(*positions.shape, self.d_model)
            return x + rows.to(x.dtype)
        end = offset + x.size(1)
        if end <= self.table.size(0):
            rows = self.table[offset:end]  # (T, D)
        else:
            positions = torch.arange(offset, end, device=x.device)
            rows = sinusoidal_table(positions, self.d_model, self.layout)
        return x + rows.to(x.dtype)


class LearnedPositionalEncoding(nn.Module):
    """A trained embedding per position, up to `max_positions`."""

    def __init__(self, d_model: int, max_positions: int) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.embedding = nn.Embedding(max_positions, d_model)

    def forward(self, x: Tensor, offset: Offset = 0) -> Tensor:
        """(B, T, D) -> (B, T, D): x plus the learned vectors of positions offset .. offset+T-1."""
        end = (offset if isinstance(offset, int) else int(offset.max())) + x.size(1)
        if end > self.max_positions:
            raise ValueError(
                f"sequence of {end} positions exceeds the learned positional encoding's "
                f"max_positions={self.max_positions}; shorten the input or raise "
                "model.max_positions (or use positional_encoding: sinusoidal)"
            )
        if isinstance(offset, Tensor):
            return x + self.embedding(position_ids(offset, x.size(1)))  # (B, T, D)
        positions = torch.arange(offset, end, device=x.device)
        return x + self.embedding(positions)


def rotary_angles(positions: Tensor, d_k: int) -> Tensor:
    """RoPE's angles pos · θ_i with θ_i = 10000^(-2i/d_k): (T,) -> (T, d_k / 2)."""
    two_i = torch.arange(0, d_k, 2, device=positions.device, dtype=torch.float32)  # (d_k/2,)
    return positions.float()[:, None] / torch.pow(BASE, two_i / d_k)


class RotaryPositionalEncoding(nn.Module):
    """RoPE: rotate each pair of features (2i, 2i+1) of a query or key at position pos by the
    angle pos · θ_i, θ_i = 10000^(-2i/d_k):

        x'_2i   = x_2i · cos(pos θ_i) − x_2i+1 · sin(pos θ_i)
        x'_2i+1 = x_2i · sin(pos θ_i) + x_2i+1 · cos(pos θ_i)

    A rotation keeps lengths, and rotating q by angle a and k by angle b changes q·k as
    rotating q alone by a − b would: the score of positions i and j depends on i − j only.
    The cos/sin of the first `precomputed` positions are a buffer outside the state dict.
    """

    def __init__(self, d_k: int, precomputed: int = 1024) -> None:
        super().__init__()
        if d_k % 2:
            raise ValueError(f"rotary positions rotate pairs of features: d_k must be even ({d_k})")
        self.d_k = d_k
        angles = rotary_angles(torch.arange(precomputed), d_k)  # (precomputed, d_k/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, offset: Offset = 0) -> Tensor:
        """Rotate x (B, H, T, d_k) as positions offset .. offset+T-1 -> (B, H, T, d_k)."""
        if isinstance(offset, Tensor):  # a first position per row
            positions = position_ids(offset, x.size(-2))  # (B, T)
            if int(positions.max()) < self.cos.size(0):
                cos, sin = self.cos[positions], self.sin[positions]  # (B, T, d_k/2)
            else:
                angles = rotary_angles(positions.flatten(), self.d_k)
                angles = angles.view(*positions.shape, -1)
                cos, sin = angles.cos(), angles.sin()
            return self.rotate(x, cos[:, None], sin[:, None])  # (B, 1, T, d_k/2): every head
        end = offset + x.size(-2)
        if end <= self.cos.size(0):
            cos, sin = self.cos[offset:end], self.sin[offset:end]  # (T, d_k/2)
        else:
            angles = rotary_angles(torch.arange(offset, end, device=x.device), self.d_k)
            cos, sin = angles.cos(), angles.sin()
        return self.rotate(x, cos, sin)

    @staticmethod
    def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Turn each pair of features of x (B, H, T, d_k) by angles whose cos and sin
        broadcast to (B, H, T, d_k/2)."""
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        even, odd = x[..., 0::2], x[..., 1::2]  # (B, H, T, d_k/2) each
        rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
        return rotated.flatten(-2)  # (B, H, T, d_k): the pairs back in place
