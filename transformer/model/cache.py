"""The decoder's key/value cache for incremental (token-by-token) decoding.

Shape legend: N hypotheses (decoder rows: sentences, or sentences x beams), B source sentences,
H heads, T tokens decoded so far, S source length, d_k = d_model / H.

Self-attention keys and values have a row per hypothesis and grow by one position a step.
Cross-attention keys and values (the encoder output, projected once) have a row per source
sentence: the N / B consecutive hypotheses of a sentence (its beams) read the same row, so
beam search neither copies them per beam nor moves them when beams are reordered.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """One attention layer's keys and values kept between decoding steps: (rows, H, T, d_k).

    Self-attention `append`s each step's new positions; cross-attention `keep`s the encoder
    output's keys and values once (`kept` then says so) and reads them at every later step.
    """

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.kept = False

    @property
    def length(self) -> int:
        """How many positions are kept (the position of the next one)."""
        return 0 if self.k is None else self.k.size(2)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Self-attention: add the new positions (N, H, T_new, d_k); return all (N, H, T, d_k)."""
        if self.kept:
            raise ValueError("this cache holds cross-attention keys; self-attention cannot grow it")
        if self.k is not None:
            k = torch.cat([self.k, k], dim=2)  # (N, H, T_cached + T_new, d_k)
            v = torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v

    def keep(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention: keep the encoder output's keys/values (B, H, S, d_k) for every step.

        They are stored contiguous: every step multiplies by them, and a strided view would
        be copied each time.
        """
        self.k, self.v, self.kept = k.contiguous(), v.contiguous(), True
        return self.k, self.v

    def select(self, rows: Tensor) -> None:
        """Keep rows `rows` (R,), in that order."""
        if self.k is not None:
            self.k = self.k.index_select(0, rows)
            self.v = self.v.index_select(0, rows)


class DecoderCache:
    """Every decoder layer's self- and cross-attention caches, and the source mask they need.

    Filled by `Transformer.decode(..., cache=...)`: the first call keeps the source's keys,
    values and padding mask; later calls read them from here. `reorder(indices)` is all a
    search calls when it keeps, drops, reorders or copies hypotheses.
    """

    def __init__(self, num_layers: int) -> None:
        self.self_attn = [KVCache() for _ in range(num_layers)]
        self.cross_attn = [KVCache() for _ in range(num_layers)]
        self.source_mask: Tensor | None = None  # (B, 1, 1, S), a row per source sentence

    @property
    def length(self) -> int:
        """How many target positions are cached (the position offset of the next token)."""
        return self.self_attn[0].length

    @property
    def holds_source(self) -> bool:
        """Whether the cross-attention keys/values (and the source mask) are cached."""
        return self.cross_attn[0].kept

    def keep_source_mask(self, src_mask: Tensor | None) -> None:
        """Remember the source padding mask (B, 1, 1, S) at the first step."""
        self.source_mask = src_mask

    def reorder(self, indices: Tensor) -> None:
        """Keep hypothesis rows `indices` (N',), in that order (beam search: each new beam's
        parent row; rows may repeat, and sentences that are done are left out).

        The sources follow: when the kept rows still come in equal runs per source, in source
        order (what beam and greedy search do), each source keeps one row of keys and values,
        and sources no row reads any more are dropped; any other order gives each row its
        own copy.
        """
        rows = self.self_attn[0].k.size(0) if self.self_attn[0].k is not None else None
        for layer in self.self_attn:
            layer.select(indices)
        if not self.holds_source or rows is None:
            return
        sources = self.cross_attn[0].k.size(0)  # (B,) rows of the source; each serves G rows
        source_of_row = indices // (rows // sources)  # (N',) the source each kept row reads
        kept, counts = torch.unique_consecutive(source_of_row, return_counts=True)
        in_runs = bool((counts == counts[0]).all()) and bool((kept[1:] > kept[:-1]).all())
        if in_runs and kept.numel() == sources:
            return  # the same sources, in order: nothing moves
        rows_to_keep = kept if in_runs else source_of_row
        for layer in self.cross_attn:
            layer.select(rows_to_keep)
        if self.source_mask is not None and self.source_mask.size(0) == sources:
            self.source_mask = self.source_mask.index_select(0, rows_to_keep)
