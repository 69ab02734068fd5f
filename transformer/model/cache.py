"""The decoder's key/value cache for incremental (token-by-token) decoding.

Shape legend: B batch (sentences x beams), H heads, T tokens decoded so far, S source length,
d_k = d_model / H.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def reorder(self, indices: Tensor) -> None:
        """Keep rows `indices` (B',) of every cached tensor, in that order."""
        for name in ("self_k", "self_v", "cross_k", "cross_v"):
            tensor = getattr(self, name)
            if tensor is not None:
                setattr(self, name, tensor.index_select(0, indices))


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
        """Select and reorder batch rows, e.g. the surviving beams after a beam-search step."""
        for layer in self.layers:
            layer.reorder(indices)
