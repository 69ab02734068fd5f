"""Continuous batching: one decode over a changing set of sentences.

`greedy_search` and `beam_search` decode a batch that is fixed when they start: a sentence
that arrives a step later waits for the slowest sentence of the batch. A `ContinuousSearch`
instead keeps one decode going. Sentences are `submit`ted at any time; each `step()`:

1. admits waiting sentences, oldest first, while the token budget allows: they are encoded
   together, get their decoder rows (one for greedy search, K beams for beam search) and
   their source keys and values (`Transformer.source_cache`), which `DecoderCache.join`
   adds to the decode under way;
2. runs one decoder step for every row of every sentence, however far each has come;
3. returns the sentences that finished at this step, which leave the decode.

Rows that joined later begin at a later slot of the shared self-attention cache; their
positions count from there and their queries skip the slots before it (`DecoderCache`).

The invariant (tests/test_continuous.py): every sentence gets the hypotheses that
`greedy_search` or `beam_search` give it alone, whatever joins or leaves around it. A beam
search sentence starts with K rows of which K - 1 have log-probability -inf, so that its
first step picks among the extensions of its one real hypothesis, as alone.

Shape legend: N decoder rows (n sentences x G rows each: G = 1 greedy, K beam), T token
columns (the cached slots and the next input), S source length, V target vocabulary.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from transformer.config import DecodingConfig
from transformer.data.batching import pad
from transformer.decoding.search import (
    BeamStep,
    Finished,
    Hypothesis,
    NonFiniteScoreError,
    beam_step,
    finish_eos_candidates,
    finish_live,
    gnmt_length_penalty,
    max_output_length,
    next_log_probs,
    outputs,
    row_max,
    strip_eos,
)
from transformer.model import Transformer

JOIN_FRACTION = 4  # sentences join once as many wait as 1/JOIN_FRACTION of those decoded
JOIN_WAIT_STEPS = 3  # ... or once the oldest has waited this many steps


@dataclass
class _Sentence:
    """A sentence being decoded: its key, source length, length limit and progress."""

    key: Hashable
    source_tokens: int
    max_len: int
    steps: int = 0
    finished: Finished | None = None  # beam search's best finished hypotheses


@dataclass
class _Waiting:
    key: Hashable
    ids: list[int]
    since: int  # the step at which it was submitted


@dataclass
class ContinuousStats:
    """What a continuous decode has done: steps, and the rows and sentences it carried."""

    steps: int = 0
    rows: int = 0  # summed over steps: rows / steps is the mean batch
    admitted: int = 0
    largest: int = 0  # the most sentences decoded at once


class ContinuousSearch:
    """Greedy (beam_size 1) or beam search over sentences that come and go between steps.

    `max_tokens` bounds the source tokens held at once, padding counted (the live sentences
    times the longest live source): a sentence waits while admitting it would pass that,
    unless nothing else is being decoded. The model's mode is the caller's business (`eval`).
    """

    def __init__(self, model: Transformer, decoding: DecodingConfig, max_tokens: int) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 (got {max_tokens})")
        self.model = model
        self.decoding = decoding
        self.max_tokens = max_tokens
        self.beam = decoding.beam_size > 1
        self.rows_per_sentence = decoding.beam_size if self.beam else 1  # G
        self.ids = model.special_ids
        self.stats = ContinuousStats()
        self._waiting: deque[_Waiting] = deque()
        self._live: list[_Sentence] = []
        self._reset()

    def _reset(self) -> None:
        """Nothing under way: an empty cache and no rows."""
        self._cache = self.model.new_cache()
        self._tokens: Tensor | None = None  # (N, T): left-padded, BOS in column begin[r]
        self._begin: Tensor | None = None  # (N,) the column of each row's BOS
        self._log_prob: Tensor | None = None  # (N,) greedy; (n, K) beam

    def submit(self, key: Hashable, ids: Sequence[int]) -> None:
        """Queue a sentence (its source ids, EOS included, at least one) under `key`."""
        if not ids:
            raise ValueError(f"sentence {key!r} has no source ids")
        self._waiting.append(_Waiting(key, list(ids), self.stats.steps))

    @property
    def waiting(self) -> int:
        """Sentences submitted and not admitted yet."""
        return len(self._waiting)

    @property
    def live(self) -> int:
        """Sentences being decoded."""
        return len(self._live)

    @property
    def slots(self) -> int:
        """Self-attention slots the cache holds per row: the memory a decode takes grows
        with it, and `trim` keeps it at the age of the oldest live sentence."""
        return self._cache.length

    def __len__(self) -> int:
        """Sentences not finished yet: waiting or being decoded."""
        return len(self._waiting) + len(self._live)

    @torch.inference_mode()
    def step(self) -> list[tuple[Hashable, list[Hypothesis]]]:
        """Admit what fits, decode one step, return the sentences that finished (key, n-best)."""
        self._admit()
        if not self._live:
            return []
        self.stats.steps += 1
        self.stats.rows += self._tokens.size(0)  # type: ignore[union-attr]
        done = self._beam_step() if self.beam else self._greedy_step()
        self._cache.trim()
        self._trim_columns()
        return done

    # ------------------------------------------------------------------ admission

    def _admit(self) -> None:
        """Move the waiting sentences that fit the budget into the decode, oldest first.

        Joining has a cost of its own (an encoder call, a copy of the cache), so sentences
        join in groups: when nothing is being decoded, when as many wait as a quarter of
        those being decoded, or when the oldest has waited JOIN_WAIT_STEPS steps.
        """
        if not self._waiting:
            return
        if self._live and not (
            len(self._waiting) * JOIN_FRACTION >= len(self._live)
            or self.stats.steps - self._waiting[0].since >= JOIN_WAIT_STEPS
        ):
            return
        taken: list[_Waiting] = []
        width = max((s.source_tokens for s in self._live), default=0)
        while self._waiting:
            candidate = self._waiting[0]
            new_width = max(width, len(candidate.ids))
            held = len(self._live) + len(taken) + 1
            if held * new_width > self.max_tokens and (self._live or taken):
                break
            taken.append(self._waiting.popleft())
            width = new_width
        if taken:
            self._join(taken)

    def _join(self, taken: list[_Waiting]) -> None:
        """Encode the new sentences, give them rows and join their cache to the decode's."""
        model, G, device = self.model, self.rows_per_sentence, self._device()
        src = torch.from_numpy(pad([w.ids for w in taken], self.ids.pad)).to(device)  # (b, S)
        src_mask = model.source_mask(src)  # (b, 1, 1, S)
        memory = model.encode(src, src_mask)  # (b, S, D)
        self._cache.join(model.source_cache(memory, src_mask, G))
        a, b = self.decoding.max_len_a, self.decoding.max_len_b
        for w in taken:
            limit = max_output_length(len(w.ids), a, b, model.max_target_positions)
            finished = Finished(self.decoding.beam_size) if self.beam else None
            self._live.append(_Sentence(w.key, len(w.ids), limit, finished=finished))
        self.stats.admitted += len(taken)
        self.stats.largest = max(self.stats.largest, len(self._live))

        rows = len(taken) * G
        columns = self._cache.length + 1  # the cached slots, then the next input
        tokens = torch.full((rows, columns), self.ids.pad, dtype=torch.long, device=device)
        tokens[:, -1] = self.ids.bos  # (rows, T): each new row begins at the last column
        begin = torch.full((rows,), columns - 1, dtype=torch.long, device=device)
        if self.beam:  # one real hypothesis, K - 1 that cannot be chosen
            log_prob = torch.full((len(taken), G), -math.inf, device=device)
            log_prob[:, 0] = 0.0
        else:
            log_prob = torch.zeros(rows, device=device)
        if self._tokens is None:
            self._tokens, self._begin, self._log_prob = tokens, begin, log_prob
        else:
            self._tokens = torch.cat([self._tokens, tokens])
            self._begin = torch.cat([self._begin, begin])  # type: ignore[list-item]
            self._log_prob = torch.cat([self._log_prob, log_prob])  # type: ignore[list-item]

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ the steps

    def _next_log_probs(self) -> Tensor:
        """Float32 log-probs of every row's next token (N, V); EOS forbidden below min_length."""
        assert self._tokens is not None
        G, min_length = self.rows_per_sentence, self.decoding.min_length
        forbid: bool | Tensor = False
        if min_length and any(s.steps < min_length for s in self._live):
            early = torch.tensor([s.steps < min_length for s in self._live])
            forbid = early.repeat_interleave(G).to(self._tokens.device)  # (N,)
        return next_log_probs(self.model, self._tokens, None, None, self._cache, forbid, self.ids)

    def _greedy_step(self) -> list[tuple[Hashable, list[Hypothesis]]]:
        """One greedy step: every row takes its most probable token; ended rows leave."""
        assert self._tokens is not None and self._log_prob is not None
        best, next_token = row_max(self._next_log_probs())  # (N,), (N,)
        self._log_prob = self._log_prob + best
        self._tokens = torch.cat([self._tokens, next_token[:, None]], dim=1)  # (N, T + 1)
        ended = (next_token == self.ids.eos).tolist()
        for sentence in self._live:
            sentence.steps += 1
        done = [ended[i] or s.max_len <= s.steps for i, s in enumerate(self._live)]
        if not any(done):
            return []
        rows = torch.tensor([i for i, d in enumerate(done) if d], device=self._tokens.device)
        results = []
        for i, hyp_ids, lp in zip(
            rows.tolist(),
            outputs(self._tokens, rows, self._begin),
            self._log_prob[rows].tolist(),
            strict=True,
        ):
            if math.isnan(lp):
                raise NonFiniteScoreError()
            stripped = strip_eos(hyp_ids, self.ids.eos)
            hypothesis = Hypothesis(stripped, lp, lp, ended=len(stripped) < len(hyp_ids))
            results.append((self._live[i].key, [hypothesis]))
        self._keep([i for i, d in enumerate(done) if not d], None)
        return results

    def _beam_step(self) -> list[tuple[Hashable, list[Hypothesis]]]:
        """One beam step for every sentence (as `beam_search`'s); done sentences leave."""
        assert self._tokens is not None and self._log_prob is not None
        K, alpha, eos = self.rows_per_sentence, self.decoding.length_penalty, self.ids.eos
        log_probs = self._next_log_probs()  # (N, V)
        log_probs += self._log_prob.view(-1, 1)
        result = beam_step(log_probs.view(len(self._live), K, -1), K, eos)
        for sentence in self._live:
            sentence.steps += 1
        finished = [s.finished for s in self._live]
        finish_eos_candidates(result, self._tokens, finished, alpha, self._begin)  # type: ignore[arg-type]
        at_limit = [i for i, s in enumerate(self._live) if s.max_len <= s.steps]
        if at_limit:
            limited = [finished[i] for i in at_limit]
            finish_live(result, self._tokens, at_limit, limited, alpha, self._begin)  # type: ignore[arg-type]
        best_live = result.live_log_prob[:, 0].tolist()  # (n,)
        if any(math.isnan(value) for value in best_live):
            raise NonFiniteScoreError()
        done = [
            s.max_len <= s.steps
            or best_live[i] == -math.inf
            or (
                s.finished.full  # type: ignore[union-attr]
                and best_live[i] / gnmt_length_penalty(s.max_len, alpha) <= s.finished.worst  # type: ignore[union-attr]
            )
            for i, s in enumerate(self._live)
        ]
        nbest = self.decoding.nbest
        results = [
            (s.key, s.finished.hypotheses[:nbest])  # type: ignore[union-attr]
            for s, d in zip(self._live, done, strict=True)
            if d
        ]
        keep = [i for i, d in enumerate(done) if not d]
        self._keep(keep, result)
        return results

    def _keep(self, keep: list[int], result: BeamStep | None) -> None:
        """Continue sentences `keep` (indices into the live list); the others leave.

        Greedy (`result` None): each kept row goes on as it is. Beam: each kept sentence's
        K rows become the extensions of its best K live candidates (`result`, a BeamStep).
        """
        self._live = [self._live[i] for i in keep]
        if not self._live:
            self._reset()
            return
        assert self._tokens is not None and self._begin is not None
        device = self._tokens.device
        keep_t = torch.tensor(keep, device=device)
        if result is None:
            rows = keep_t  # (N',)
            tokens = self._tokens[rows]  # (N', T)
            self._log_prob = self._log_prob[rows]  # type: ignore[index]
        else:
            rows = result.live_parent[keep_t].view(-1)  # (N',)
            next_token = result.live_token[keep_t].view(-1, 1)
            tokens = torch.cat([self._tokens[rows], next_token], dim=1)  # (N', T + 1)
            self._log_prob = result.live_log_prob[keep_t]  # (n', K)
        self._tokens, self._begin = tokens, self._begin[rows]
        self._cache.reorder(rows)

    def _trim_columns(self) -> None:
        """Drop the token columns before every row's BOS (the cache drops the same slots)."""
        if self._begin is None or self._tokens is None:
            return
        unused = int(self._begin.min())
        if unused:
            self._tokens = self._tokens[:, unused:]
            self._begin = self._begin - unused
