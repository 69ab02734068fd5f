"""The decoder's key/value cache for incremental (token-by-token) decoding.

Shape legend: B batch (sentences x beams), H heads, T tokens decoded so far, S source length,
d_k = d_model / H.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LayerCache:
    """One decoder layer's cached projections.

    self_k, self_v: (B, H, T, d_k), the self-attention keys/values of every decoded position;
    cross_k, cross_v: (B, H, S, d_k), the encoder output projected once for cross-attention.
    """

    self_k: Tensor | None = None
    self_v: Tensor | None = None
    cross_k: Tensor | None = None
    cross_v: Tensor | None = None

    def append_self(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append the new positions' keys/values (B, H, T_new, d_k); return all (B, H, T, d_k)."""
        if self.self_k is not None:
            k = torch.cat([self.self_k, k], dim=2)  # (B, H, T_cached + T_new, d_k)
            v = torch.cat([self.self_v, v], dim=2)
        self.self_k, self.self_v = k, v
        return k, v

    def set_cross(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Keep the cross-attention keys/values (B, H, S, d_k); return them as kept.

        They are stored contiguous: every decoding step multiplies by them, and a strided
        view would be copied each time.
        """
        self.cross_k, self.cross_v = k.contiguous(), v.contiguous()
        return self.cross_k, self.cross_v

    def reorder(self, indices: Tensor, cross_indices: Tensor | None) -> None:
        """Keep self-attention rows `indices` (B',) and cross-attention rows `cross_indices`.

        `cross_indices` None leaves the cross-attention keys/values as they are.
        """
        if self.self_k is not None:
            self.self_k = self.self_k.index_select(0, indices)
            self.self_v = self.self_v.index_select(0, indices)
        if self.cross_k is not None and cross_indices is not None:
            self.cross_k = self.cross_k.index_select(0, cross_indices)
            self.cross_v = self.cross_v.index_select(0, cross_indices)


class DecoderCache:
    """Every decoder layer's `LayerCache`; filled by `Transformer.decode(..., cache=...)`."""

    def __init__(self, num_layers: int) -> None:
        self.layers = [LayerCache() for _ in range(num_layers)]

    @property
    def length(self) -> int:
        """How many target positions are cached (the position offset of the next token)."""
        first = self.layers[0].self_k
        return 0 if first is None else first.size(2)

    def reorder(self, indices: Tensor) -> None:
        """Select and reorder batch rows (B',), e.g. the surviving beams after a search step."""
        for layer in self.layers:
            layer.reorder(indices, indices)

    def reorder_beams(self, indices: Tensor, sentence_rows: Tensor | None = None) -> None:
        """Reorder beams, whose cross-attention keys/values are kept once per sentence.

        Self-attention rows follow `indices` (B',). The beams of a sentence share its encoder
        output, so the cross-attention rows (one per sentence) move only when sentences leave
        the batch: `sentence_rows` (B'',) then names the old row of each sentence kept.
        """
        for layer in self.layers:
            layer.reorder(indices, sentence_rows)
