"""The decoder's key/value cache for incremental (token-by-token) decoding.

Shape legend: N hypotheses (decoder rows: sentences, or sentences x beams), B source sentences,
H heads, T tokens decoded so far, S source length, d_k = d_model / H.

Self-attention keys and values have a row per hypothesis and grow by one position a step.
Cross-attention keys and values (the encoder output, projected once) have a row per source
sentence: the N / B consecutive hypotheses of a sentence (its beams) read the same row, so
beam search neither copies them per beam nor moves them when beams are reordered.

Rows may also have come different distances (continuous batching: a sentence joins a decode
under way). Then the self-attention slots are shared and each row's own positions begin at
its `start` slot: the slots before it are zeros that its queries do not attend (`key_mask`),
and its next position is `length - start`. `join` adds rows this way; `trim` drops the
slots no row needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
        self.start: Tensor | None = None  # (rows,) each row's first slot; None: all 0
        self.joining = 0  # rows joined after k's, not laid out yet (zero slots until `append`)

    @property
    def rows(self) -> int:
        """Rows (hypotheses) held, those joining included."""
        return (0 if self.k is None else self.k.size(0)) + self.joining

    @property
    def next_position(self) -> int | Tensor:
        """The position of the next token: one for every row, or one per row (rows,)."""
        return self.length if self.start is None else self.length - self.start

    def key_mask(self, new: int) -> Tensor | None:
        """Which of the slots after `new` more positions each row attends: (rows, 1, 1,
        length + new), or None when every row attends every slot."""
        if self.start is None:
            return None
        slots = torch.arange(self.length + new, device=self.start.device)
        return (slots >= self.start[:, None])[:, None, None, :]

    @property
    def length(self) -> int:
        """How many positions are kept (the position of the next one)."""
        return 0 if self.k is None else self.k.size(2)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Self-attention: add the new positions (N, H, T_new, d_k); return all (N, H, T, d_k)."""
        if self.kept:
            raise ValueError("this cache holds cross-attention keys; self-attention cannot grow it")
        if self.joining:  # lay the joined rows out and add the new positions in one copy
            k, v = self._grown(self.k, k), self._grown(self.v, v)
            self.joining = 0
        elif self.k is not None:
            k = torch.cat([self.k, k], dim=2)  # (N, H, T_cached + T_new, d_k)
            v = torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v

    def _grown(self, cached: Tensor, new: Tensor) -> Tensor:
        """The cached slots of the old rows, zero slots for the joining rows, then the new
        positions of every row: (rows, H, T_cached + T_new, d_k)."""
        old, T = cached.size(0), cached.size(2)
        grown = new.new_empty(new.size(0), new.size(1), T + new.size(2), new.size(3))
        grown[:old, :, :T] = cached
        grown[old:, :, :T] = 0
        grown[:, :, T:] = new
        return grown

    def _lay_out(self) -> None:
        """Give the joining rows their zero slots now."""
        if self.joining and self.k is not None and self.v is not None:
            zeros = self.k.new_zeros(self.joining, *self.k.shape[1:])
            self.k, self.v = torch.cat([self.k, zeros]), torch.cat([self.v, zeros])
        self.joining = 0

    def keep(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention: keep the encoder output's keys/values (B, H, S, d_k) for every step.

        They are stored contiguous: every step multiplies by them, and a strided view would
        be copied each time.
        """
        self.k, self.v, self.kept = k.contiguous(), v.contiguous(), True
        return self.k, self.v

    def select(self, rows: Tensor) -> None:
        """Keep rows `rows` (R,), in that order."""
        self._lay_out()
        if self.k is not None:
            self.k = self.k.index_select(0, rows)
            self.v = self.v.index_select(0, rows)
        if self.start is not None:
            self.start = self.start.index_select(0, rows)

    def join(self, other: KVCache) -> None:
        """Self-attention: put the rows of `other`, which hold no position yet (sentences about
        to take their first step), after these. Their positions begin at this cache's next
        slot; the next `append` gives them zero slots before it, in the one copy it makes."""
        assert self.k is not None and other.k is not None
        if other.length:
            raise ValueError("only rows that hold no position yet can join a decode under way")
        start = torch.full((other.rows,), self.length, device=self.k.device)
        self.start = torch.cat([self._starts(), start])
        self.joining += other.rows

    def _starts(self) -> Tensor:
        """Each row's first slot (rows,), zeros when all begin at 0."""
        if self.start is not None:
            return self.start
        device = self.k.device if self.k is not None else None
        return torch.zeros(self.rows, dtype=torch.long, device=device)

    def trim(self, slots: tuple[int, bool] | None = None) -> None:
        """Self-attention: drop the leading slots that no row attends any more. `slots` is
        `unused_slots(self.start)`, worked out here when not given (`DecoderCache.trim`
        works it out once for all its layers)."""
        if self.start is None or self.k is None:
            return
        self._lay_out()
        unused, aligned = slots if slots is not None else unused_slots(self.start)
        if unused:
            self.k, self.v = self.k[:, :, unused:], self.v[:, :, unused:]
        self.start = None if aligned else self.start - unused


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

    @property
    def next_position(self) -> int | Tensor:
        """The position of the next target token: one for all rows, or one per row (N,)."""
        return self.self_attn[0].next_position

    def key_mask(self, new: int) -> Tensor | None:
        """Which self-attention slots, with `new` more, each row attends: (N, 1, 1, T_all),
        or None when all of them (every row began at slot 0)."""
        return self.self_attn[0].key_mask(new)

    @property
    def rows(self) -> int:
        """Decoder rows (hypotheses) the cache holds."""
        return self.self_attn[0].rows

    def join(self, other: DecoderCache) -> None:
        """Put the rows of `other` (a cache holding its source and no target position yet,
        see `Transformer.source_cache`) after these rows, as continuous batching adds
        sentences to a decode under way.

        Both must give their sources the same number of rows (1 for greedy search, the beam
        size for beam search). The new rows' self-attention begins at this cache's next slot
        (`KVCache.join`); the sources are right-padded with masked zero keys to the longer.
        """
        if self.rows == 0:  # nothing under way: take the other's rows as they are
            self.self_attn, self.cross_attn = other.self_attn, other.cross_attn
            self.source_mask = other.source_mask
            return
        if self.rows // self.sources != other.rows // other.sources:
            raise ValueError("joined caches must give each source the same number of rows")
        for mine, theirs in zip(self.self_attn, other.self_attn, strict=True):
            mine.join(theirs)
        S = max(self.source_length, other.source_length)
        for mine, theirs in zip(self.cross_attn, other.cross_attn, strict=True):
            mine.k, mine.v = (
                torch.cat([_pad_source(a, S), _pad_source(b, S)])
                for a, b in ((mine.k, theirs.k), (mine.v, theirs.v))
            )  # (B + B', H_kv, S, d_k)
        assert self.source_mask is not None and other.source_mask is not None
        self.source_mask = torch.cat(
            [
                F.pad(m, (0, S - m.size(-1)), value=False)
                for m in (self.source_mask, other.source_mask)
            ]
        )  # (B + B', 1, 1, S)

    def trim(self) -> None:
        """Drop the self-attention slots no row attends, and the source positions no source
        has once they are a quarter of them (after the rows that needed them left)."""
        start = self.self_attn[0].start  # (N,) the same in every layer
        if start is not None:
            slots = unused_slots(start)
            for layer in self.self_attn:
                layer.trim(slots)
        if self.source_mask is None or not self.holds_source:
            return
        used = int(self.source_mask.any(dim=0).flatten().nonzero().max()) + 1
        if used < self.source_length * 3 // 4:  # copying the keys pays only for a real cut
            self.source_mask = self.source_mask[..., :used]
            for layer in self.cross_attn:
                layer.k = layer.k[:, :, :used].contiguous()  # (B, H_kv, used, d_k)
                layer.v = layer.v[:, :, :used].contiguous()

    @property
    def sources(self) -> int:
        """Source sentences whose keys and values the cache holds."""
        return self.cross_attn[0].k.size(0) if self.holds_source else 0

    @property
    def source_length(self) -> int:
        """S, the (padded) source positions the cross-attention reads."""
        return self.cross_attn[0].k.size(2) if self.holds_source else 0

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
        rows = self.rows if self.self_attn[0].k is not None else None
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


def unused_slots(start: Tensor) -> tuple[int, bool]:
    """The leading self-attention slots no row attends (the least of the rows' `start` slots,
    (N,)), and whether every row begins there (so that none needs a start after the trim)."""
    unused = int(start.min())
    return unused, bool((start == unused).all())


def _pad_source(x: Tensor, length: int) -> Tensor:
    """Cross-attention keys or values (B, H_kv, S, d_k) padded with zeros to `length` positions."""
    return x if x.size(2) == length else F.pad(x, (0, 0, 0, length - x.size(2)))
