"""Sampled segmentations of one SentencePiece model, drawn from a generator of our own.

SentencePiece samples too (``encode(enable_sampling=True)``), but from a generator that
``spm.set_random_generator_seed`` does not make reproducible across processes (sentencepiece
0.2.3 mixes in seed material from the operating system), and resuming a run exactly needs
the segmentation of an epoch to be the same in every process. So the draws are made here,
with `random.Random`, on what SentencePiece computes deterministically (its normalizer, its
pieces and scores, its n-best lists); with the randomness turned off they give exactly
SentencePiece's best segmentation:

- unigram, nbest_size -1: forward-filtering backward-sampling on the lattice of all pieces
  (Kudo, 2018): a segmentation x drawn with probability ∝ P(x)^alpha;
- unigram, nbest_size N > 1: one of SentencePiece's N best, drawn ∝ P(x)^alpha;
- bpe: BPE-dropout (Provilkov et al., 2020): SentencePiece's merges, best first, each
  skipped with probability alpha.

Only SentencePiece, numpy and the standard library are imported: this module runs in the
worker processes that sample epochs ahead (`transformer.data.sampling`).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import re
import signal

import numpy as np
import sentencepiece as spm

UNK_PENALTY = 10.0  # SentencePiece's: an unknown character scores min score - 10
TABLE_CACHE = 50_000  # words whose lattice a sampler keeps (about 5 kB each): the first seen
_WORD = re.compile("▁[^▁]*|[^▁]+")  # a word: from one "▁" to the next


class SubwordSampler:
    """Draws segmentations of texts for one SentencePiece model (unigram or bpe)."""

    def __init__(self, model_proto: bytes, kind: str, alpha: float, nbest_size: int) -> None:
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.kind = kind
        self.alpha = alpha
        self.nbest_size = nbest_size
        sp = self._sp
        self._pieces: dict[str, tuple[int, float]] = {}  # the pieces a text may be cut into
        for piece_id in range(sp.get_piece_size()):
            if not (sp.is_control(piece_id) or sp.is_unknown(piece_id) or sp.is_unused(piece_id)):
                self._pieces[sp.id_to_piece(piece_id)] = (piece_id, sp.get_score(piece_id))
        self._longest = max(map(len, self._pieces), default=1)
        self._unk_id = sp.unk_id()
        self._unk_score = min((s for _, s in self._pieces.values()), default=0.0) - UNK_PENALTY
        self._by_word = all("▁" not in piece[1:] for piece in self._pieces)
        self._tables: dict[str, list[tuple[list[tuple[int, int]], list[float]]]] = {}

    def best(self, texts: list[str]) -> list[list[int]]:
        """SentencePiece's own (best) segmentation of each text."""
        return self._sp.encode(texts, out_type=int, num_threads=1)

    def sample(self, text: str, rng: random.Random) -> list[int]:
        """Piece ids of one sampled segmentation of `text`."""
        if self.kind == "bpe":
            return self._bpe_dropout(self._sp.normalize(text), rng)
        if self.nbest_size == 1:
            return self._sp.encode(text, out_type=int)
        if self.nbest_size > 1:
            return self._from_nbest(text, rng)
        return self._from_lattice(self._sp.normalize(text), rng)

    # ------------------------------------------------------------------ unigram

    def _score(self, ids: list[int]) -> float:
        return sum(self._unk_score if i == self._unk_id else self._sp.get_score(i) for i in ids)

    def _from_nbest(self, text: str, rng: random.Random) -> list[int]:
        """One of the nbest_size best segmentations, drawn ∝ exp(alpha · log P(x))."""
        candidates = self._sp.nbest_encode(text, nbest_size=self.nbest_size, out_type=int)
        if len(candidates) < 2:
            return candidates[0] if candidates else []
        logits = [self.alpha * self._score(ids) for ids in candidates]
        top = max(logits)
        return rng.choices(candidates, weights=[math.exp(x - top) for x in logits])[0]

    def _from_lattice(self, normalized: str, rng: random.Random) -> list[int]:
        """Forward-filtering backward-sampling over every segmentation into pieces.

        No piece holds "▁" but at its start, so each word (from one "▁" to the next) is cut
        on its own: its lattice and forward weights are computed once per sampler.
        """
        ids: list[int] = []
        for word in _WORD.findall(normalized) if self._by_word else [normalized]:
            table = self._tables.get(word)
            if table is None:
                table = self._lattice(word)
                if len(self._tables) < TABLE_CACHE:  # mostly the frequent words: seen first
                    self._tables[word] = table
            cut: list[int] = []
            end = len(word)
            while end > 0:
                nodes, cumulative = table[end]
                end, piece_id = rng.choices(nodes, cum_weights=cumulative)[0]
                cut.append(piece_id)
            ids.extend(reversed(cut))
        return _merge_unknowns(ids, self._unk_id)

    def _lattice(self, text: str) -> list[tuple[list[tuple[int, int]], list[float]]]:
        """For each end position: the pieces ending there (start, id) and the cumulative
        probabilities of each being the last piece of a path to that position."""
        length, theta = len(text), self.alpha
        ending: list[list[tuple[int, int, float]]] = [[] for _ in range(length + 1)]
        for start in range(length):  # the lattice: every piece, by where it ends
            single = False
            for end in range(start + 1, min(length, start + self._longest) + 1):
                found = self._pieces.get(text[start:end])
                if found is not None:
                    ending[end].append((start, found[0], found[1]))
                    single = single or end == start + 1
            if not single:
                ending[start + 1].append((start, self._unk_id, self._unk_score))
        forward = [0.0] * (length + 1)  # log of the summed weight of all paths to a position
        table: list[tuple[list[tuple[int, int]], list[float]]] = [([], [])]
        for end in range(1, length + 1):
            terms = [forward[start] + theta * score for start, _, score in ending[end]]
            top = max(terms)
            forward[end] = top + math.log(sum(math.exp(t - top) for t in terms))
            weights = [math.exp(t - forward[end]) for t in terms]
            cumulative = list(itertools.accumulate(weights))
            table.append(([(start, piece_id) for start, piece_id, _ in ending[end]], cumulative))
        return table

    # ------------------------------------------------------------------ bpe

    def _bpe_dropout(self, normalized: str, rng: random.Random) -> list[int]:
        """SentencePiece's BPE (the best-scored merge first, then the leftmost), each merge
        skipped with probability alpha."""
        symbols: list[str | None] = list(normalized)
        following = list(range(1, len(symbols) + 1))
        preceding = list(range(-1, len(symbols) - 1))
        agenda: list[tuple[float, int, int, str]] = []

        def consider(left: int, right: int) -> None:
            if left < 0 or right >= len(symbols):
                return
            merged = f"{symbols[left]}{symbols[right]}"
            found = self._pieces.get(merged)
            if found is not None:
                heapq.heappush(agenda, (-found[1], left, right, merged))

        for index in range(len(symbols) - 1):
            consider(index, index + 1)
        while agenda:
            _, left, right, merged = heapq.heappop(agenda)
            if symbols[left] is None or symbols[right] is None:
                continue
            if f"{symbols[left]}{symbols[right]}" != merged or following[left] != right:
                continue  # stale: one side was merged since
            if rng.random() < self.alpha:
                continue  # dropped: this merge does not happen in this segmentation
            symbols[left], symbols[right] = merged, None
            following[left] = following[right]
            if following[right] < len(symbols):
                preceding[following[right]] = left
            consider(preceding[left], left)
            consider(left, following[left])
        ids = []
        for symbol in symbols:
            if symbol is not None:
                found = self._pieces.get(symbol)
                ids.append(found[0] if found is not None else self._unk_id)
        return _merge_unknowns(ids, self._unk_id)


def _merge_unknowns(ids: list[int], unk_id: int) -> list[int]:
    """One UNK for each run of unknown pieces, as SentencePiece's encode gives."""
    return [i for k, i in enumerate(ids) if not (i == unk_id and k and ids[k - 1] == unk_id)]


def sample_texts(
    sampler: SubwordSampler, texts: list[str], seed: int, max_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sampled ids of `texts` (flat int32, no EOS) and their lengths (int64), drawn from
    `random.Random(seed)`; a text whose sample has more than max_length - 1 pieces (EOS
    makes max_length) takes its best segmentation instead."""
    rng = random.Random(seed)
    sampled = [sampler.sample(text, rng) for text in texts]
    too_long = [k for k, ids in enumerate(sampled) if len(ids) + 1 > max_length]
    for k, ids in zip(too_long, sampler.best([texts[k] for k in too_long]), strict=True):
        sampled[k] = ids
    lengths = np.fromiter(map(len, sampled), dtype=np.int64, count=len(sampled))
    tokens = np.fromiter(
        (i for ids in sampled for i in ids), dtype=np.int32, count=int(lengths.sum())
    )
    return tokens, lengths


def ignore_interrupts() -> None:
    """Run by each worker process first: Ctrl-C reaches the whole process group, and the
    training process, which handles it, stops the workers (no traceback from them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
