"""Greedy and beam search over `model.encode` and the (cached) `model.decode`.

Shape legend: B sentences, K beam size, S source length, T tokens decoded so far (BOS
included), D d_model, V target vocabulary. Beam rows are flattened sentence-major: row
`b * K + k` is beam k of sentence b.

Conventions shared by both searches:

- A sentence is decoded for at most `int(max_len_a * src_len + max_len_b)` steps, where
  `src_len` is its number of non-pad source tokens (at least 1 step, and at most the
  model's `max_target_positions` when it has one). EOS takes a step, so an output holds
  at most that many tokens, or one fewer and EOS; a hypothesis still going at the limit is
  returned as it is, unfinished (without EOS).
- `min_length`: EOS is forbidden until a hypothesis has that many tokens. PAD is never produced.
- The special ids (PAD, BOS, EOS) are the model's `special_ids`.
  Forbidden tokens get log-probability -inf; the others keep the model's log-softmax value
  (no renormalisation), so every score is a log-probability under the model.
- Log-softmax is taken in float32 whatever the model's dtype.
- Beam scores use the GNMT length penalty `lp(n) = ((5 + n) / 6) ** alpha` where `n` counts the
  predicted tokens, EOS included when the hypothesis ended with it:
  `score = log_prob / lp(n)`. Greedy search ranks nothing, so its score is the plain log_prob.

The model's mode is the caller's business: call `model.eval()` first, or dropout stays on.
Every search runs under `torch.inference_mode()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from transformer.config import DecodingConfig
from transformer.data.special_ids import SpecialIds
from transformer.errors import UserError


class NonFiniteScoreError(UserError, ValueError):
    """The model scored a hypothesis NaN: its parameters are not all finite numbers."""

    def __init__(self) -> None:
        super().__init__(
            "the model's scores are not finite numbers (NaN): its parameters are damaged or "
            "training diverged; decode with another checkpoint"
        )


class Cache(Protocol):
    """What the searches need of a decoder cache (`transformer.model.DecoderCache`)."""

    @property
    def length(self) -> int:
        """Number of target positions already cached."""
        ...

    def reorder(self, indices: Tensor) -> None:
        """Keep hypothesis rows `indices`, in that order (rows may repeat)."""
        ...


class Seq2SeqModel(Protocol):
    """What the searches need of a model (`transformer.model.Transformer` provides it)."""

    @property
    def special_ids(self) -> SpecialIds:
        """PAD, BOS and EOS ids."""
        ...

    @property
    def max_target_positions(self) -> int | None:
        """The most target positions the decoder reads (None: no limit)."""
        ...

    def source_mask(self, src: Tensor) -> Tensor:
        """Source ids (B, S) -> key mask (B, 1, 1, S), True = may attend."""
        ...

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Source ids (B, S) -> memory (B, S, D)."""
        ...

    def decode(
        self, tgt: Tensor, memory: Tensor, src_mask: Tensor | None, cache: Cache | None = None
    ) -> Tensor:
        """Target ids (N, T), N a multiple of B -> next-token logits (N, T, V); with a cache,
        only the new positions."""
        ...

    def new_cache(self) -> Cache:
        """An empty cache for incremental decoding."""
        ...


@dataclass
class Hypothesis:
    """One output sentence: tokens without BOS/EOS, its length-penalised score and log-prob.

    `ended` says whether it ended with EOS (counted in its log-prob), rather than being cut
    at the maximum length.
    """

    tokens: list[int]
    score: float
    log_prob: float
    ended: bool = True


def gnmt_length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty lp(n) = ((5 + n) / 6) ** alpha; alpha = 0 gives 1 (no penalty)."""
    return ((5.0 + length) / 6.0) ** alpha


def max_output_length(
    src_len: int, max_len_a: float, max_len_b: int, max_positions: int | None = None
) -> int:
    """The most tokens a sentence of `src_len` source tokens is decoded for (EOS included):
    int(max_len_a * src_len + max_len_b), at least 1, at most `max_positions` (the model's
    `max_target_positions`; None: no cap).

    The one home of the longest decodable length: both searches, the CTranslate2 engine and
    the exporter (which sizes the export's table of positions by it) ask here.
    """
    limit = max(1, int(max_len_a * src_len + max_len_b))
    return limit if max_positions is None else min(limit, max_positions)


def max_output_lengths(
    src: Tensor,
    max_len_a: float,
    max_len_b: int,
    pad_id: int,
    max_positions: int | None = None,
) -> list[int]:
    """Per sentence of source ids (B, S): `max_output_length` of its non-pad tokens."""
    src_lengths = (src != pad_id).sum(dim=1).tolist()
    return [max_output_length(n, max_len_a, max_len_b, max_positions) for n in src_lengths]


def next_log_probs(
    model: Seq2SeqModel,
    tokens: Tensor,
    memory: Tensor | None,
    src_mask: Tensor | None,
    cache: Cache | None,
    forbid_eos: bool | Tensor,
    ids: SpecialIds,
) -> Tensor:
    """Float32 log-probabilities of the next token after each prefix: (N, T) -> (N, V).

    `memory` and `src_mask` have a row per sentence; the N prefixes are its hypotheses.
    `forbid_eos` forbids EOS in every row, or in the rows where a tensor (N,) is True.
    """
    if cache is None:
        logits = model.decode(tokens, memory, src_mask)[:, -1]  # whole prefix each step
    else:
        logits = model.decode(tokens[:, -1:], memory, src_mask, cache)[:, -1]  # (N, V)
    log_probs = logits.float().log_softmax(dim=-1)  # (N, V)
    log_probs[:, ids.pad] = -math.inf
    if isinstance(forbid_eos, Tensor):
        log_probs[forbid_eos, ids.eos] = -math.inf
    elif forbid_eos:
        log_probs[:, ids.eos] = -math.inf
    return log_probs


def row_max(x: Tensor, block: int = 64) -> tuple[Tensor, Tensor]:
    """Each row's maximum and the index of its first occurrence: (N, V) -> (N,), (N,).

    The same as `x.max(dim=-1)`, faster on a CPU, where the index-keeping reduction along a
    long row runs one element at a time: the maxima of blocks of `block` columns come from a
    vectorized reduction, and only the first block holding the row's maximum is searched.
    """
    N, V = x.shape
    if V % block:
        x = torch.nn.functional.pad(x, (0, block - V % block), value=-math.inf)
    blocks = x.view(N, -1, block)  # (N, V / block, block)
    block_max = blocks.amax(dim=-1)  # (N, V / block)
    best_block = block_max.argmax(dim=-1)  # (N,) the first block holding the maximum
    rows = torch.arange(N, device=x.device)
    within = blocks[rows, best_block].argmax(dim=-1)  # (N,) first position inside it
    return block_max[rows, best_block], best_block * block + within


def strip_eos(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[:-1] if tokens and tokens[-1] == eos_id else tokens


@torch.inference_mode()
def greedy_search(
    model: Seq2SeqModel,
    src: Tensor,
    max_len_a: float,
    max_len_b: int,
    min_length: int = 0,
    use_cache: bool = True,
) -> list[list[Hypothesis]]:
    """The most probable next token at each step, for a batch of source ids (B, S).

    Returns per sentence, in input order, a list of one hypothesis (the shape of
    `beam_search`'s n-best lists); its score is the sum of the token log-probs (EOS included
    when produced). Finished sentences leave the batch.
    """
    ids = model.special_ids
    B, device = src.size(0), src.device
    max_lens = max_output_lengths(src, max_len_a, max_len_b, ids.pad, model.max_target_positions)
    src_mask = model.source_mask(src)  # (B, 1, 1, S)
    memory = model.encode(src, src_mask)  # (B, S, D)
    cache = model.new_cache() if use_cache else None
    results: list[Hypothesis] = [Hypothesis([], 0.0, 0.0) for _ in range(B)]
    active = list(range(B))  # original index of each active sentence
    tokens = torch.full((B, 1), ids.bos, dtype=torch.long, device=device)  # (N, T)
    log_prob = torch.zeros(B, device=device)  # (N,)
    step = 0
    while active:
        log_probs = next_log_probs(
            model, tokens, memory, src_mask, cache, step < min_length, ids
        )  # (N, V)
        best, next_token = row_max(log_probs)  # (N,), (N,)
        log_prob = log_prob + best
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)  # (N, T + 1)
        step += 1
        ended = (next_token == ids.eos).tolist()
        done = [ended[i] or max_lens[b] <= step for i, b in enumerate(active)]
        if not any(done):
            continue
        rows = torch.tensor([i for i, d in enumerate(done) if d], device=device)
        for i, hyp_ids, lp in zip(
            rows.tolist(), tokens[rows, 1:].tolist(), log_prob[rows].tolist(), strict=True
        ):
            if math.isnan(lp):
                raise NonFiniteScoreError()
            stripped = strip_eos(hyp_ids, ids.eos)
            results[active[i]] = Hypothesis(stripped, lp, lp, ended=len(stripped) < len(hyp_ids))
        keep = [i for i, d in enumerate(done) if not d]
        active = [active[i] for i in keep]
        if not active:
            break
        keep_t = torch.tensor(keep, device=device)
        tokens, log_prob = tokens[keep_t], log_prob[keep_t]  # (N', T), (N',)
        memory, src_mask = memory[keep_t], src_mask[keep_t]
        if cache is not None:
            cache.reorder(keep_t)
    return [[hypothesis] for hypothesis in results]


class BeamStep(NamedTuple):
    """What one beam step keeps of the 2K best candidates of each of N sentences."""

    eos_log_prob: Tensor  # (N, K) EOS candidates among the best K; -inf at other positions
    eos_parent: Tensor  # (N, K) flat row (sentence * k + hypothesis) each candidate extends
    live_log_prob: Tensor  # (N, K) the best K candidates not ending in EOS, best first
    live_parent: Tensor  # (N, K) flat row each live candidate extends
    live_token: Tensor  # (N, K) the token each live candidate appends


def beam_step(candidate_log_prob: Tensor, beam_size: int, eos_id: int) -> BeamStep:
    """One beam step over the log-probs (N, k, V) of every one-token extension of the k
    hypotheses of N sentences (k is 1 at the first step, then the beam size K).

    The best 2K of the k * V extensions are taken so that K survive even when K of them end
    in EOS (at most one per hypothesis can). EOS candidates count only among the best K:
    beyond that rank, K better extensions exist. With fewer than 2K extensions (a tiny
    vocabulary), the missing candidates have log-prob -inf.
    """
    N, k, V = candidate_log_prob.shape
    K = beam_size
    taken = min(2 * K, k * V)
    cand_log_prob, cand_index = candidate_log_prob.view(N, k * V).topk(taken, dim=1)  # (N, 2K)
    if taken < 2 * K:
        cand_log_prob = F.pad(cand_log_prob, (0, 2 * K - taken), value=-math.inf)
        cand_index = F.pad(cand_index, (0, 2 * K - taken), value=0)
    cand_parent = cand_index // V + torch.arange(N, device=cand_index.device)[:, None] * k
    cand_token = cand_index % V  # (N, 2K)
    cand_eos = cand_token == eos_id  # (N, 2K)
    eos_log_prob = cand_log_prob[:, :K].masked_fill(~cand_eos[:, :K], -math.inf)  # (N, K)
    live = cand_eos.to(torch.uint8).argsort(dim=1, stable=True)[:, :K]  # (N, K) rank order
    return BeamStep(
        eos_log_prob,
        cand_parent[:, :K],
        cand_log_prob.gather(1, live),
        cand_parent.gather(1, live),
        cand_token.gather(1, live),
    )


class Finished:
    """The best `beam_size` finished hypotheses of one sentence, best first."""

    def __init__(self, beam_size: int) -> None:
        self.beam_size = beam_size
        self.hypotheses: list[Hypothesis] = []

    def add(self, tokens: list[int], log_prob: float, ended: bool, alpha: float) -> None:
        """Keep a hypothesis if it is among the best so far (lp counts its EOS if it ended)."""
        score = log_prob / gnmt_length_penalty(len(tokens) + ended, alpha)
        if self.full and score <= self.worst:
            return
        self.hypotheses.append(Hypothesis(tokens, score, log_prob, ended))
        self.hypotheses.sort(key=lambda h: h.score, reverse=True)
        del self.hypotheses[self.beam_size :]

    @property
    def full(self) -> bool:
        """Whether `beam_size` hypotheses have finished."""
        return len(self.hypotheses) >= self.beam_size

    @property
    def worst(self) -> float:
        """Score of the worst kept hypothesis (-inf while not full)."""
        return self.hypotheses[-1].score if self.full else -math.inf


def outputs(tokens: Tensor, rows: Tensor, begin: Tensor | None = None) -> list[list[int]]:
    """The tokens after BOS of hypotheses `rows` of `tokens` (N, T), whose BOS is in column
    0 or, when rows began at different columns (continuous batching), in `begin` (N,)."""
    if begin is None:
        return tokens[rows, 1:].tolist()
    return [
        ids[b + 1 :] for ids, b in zip(tokens[rows].tolist(), begin[rows].tolist(), strict=True)
    ]


def finish_eos_candidates(
    result: BeamStep,
    tokens: Tensor,
    finished: list[Finished],
    alpha: float,
    begin: Tensor | None = None,
) -> None:
    """Record each sentence's EOS candidates; only these few rows are copied to the CPU."""
    hits = result.eos_log_prob.isfinite().nonzero()  # (E, 2): sentence, rank
    parents = result.eos_parent[hits[:, 0], hits[:, 1]]  # (E,)
    for i, ids, log_prob in zip(
        hits[:, 0].tolist(),
        outputs(tokens, parents, begin),
        result.eos_log_prob[hits[:, 0], hits[:, 1]].tolist(),
        strict=True,
    ):
        finished[i].add(ids, log_prob, True, alpha)


def finish_live(
    result: BeamStep,
    tokens: Tensor,
    sentences: list[int],
    finished: list[Finished],
    alpha: float,
    begin: Tensor | None = None,
) -> None:
    """Record the live hypotheses of `sentences` (at their maximum length) as they are."""
    rows = torch.tensor(sentences, device=tokens.device)
    K = result.live_token.size(1)
    parents = outputs(tokens, result.live_parent[rows].view(-1), begin)  # L·K lists
    tokens_k = result.live_token[rows].tolist()  # (L, K)
    for s, (sentence, log_prob_k) in enumerate(
        zip(finished, result.live_log_prob[rows].tolist(), strict=True)
    ):
        for k, log_prob in enumerate(log_prob_k):
            if log_prob > -math.inf:
                sentence.add([*parents[s * K + k], tokens_k[s][k]], log_prob, False, alpha)


@torch.inference_mode()
def beam_search(
    model: Seq2SeqModel,
    src: Tensor,
    beam_size: int,
    max_len_a: float,
    max_len_b: int,
    nbest: int = 1,
    length_penalty: float = 0.6,
    min_length: int = 0,
    use_cache: bool = True,
) -> list[list[Hypothesis]]:
    """Beam search over a batch of source ids (B, S): per sentence its n-best list, best first.

    Each sentence starts from one hypothesis (BOS) and keeps K = `beam_size` after the first
    step; all hypotheses of all sentences are decoded together as rows, sentence-major, and
    the encoder runs once. Each step (`beam_step`) finishes the EOS candidates among the best
    K and continues the best K others, reordering the cache to follow them. A sentence is
    done at its maximum length (its live hypotheses are then finished as they are), or once K
    hypotheses have finished and the best live log-prob over lp(max length) does not beat the
    worst of them: for alpha >= 0 no continuation can score better, since log-probs only fall
    and lp only grows. Done sentences leave the batch. Lists may hold fewer than `nbest`
    hypotheses only when fewer distinct outputs exist.
    """
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"need 1 <= nbest <= beam_size, got {beam_size=} and {nbest=}")
    # A ValueError (ConfigError) past what lp(n) can take: the config's own bound.
    DecodingConfig.check_setting("length_penalty", length_penalty)
    ids = model.special_ids
    alpha, K, device = length_penalty, beam_size, src.device
    B = src.size(0)
    max_lens = max_output_lengths(src, max_len_a, max_len_b, ids.pad, model.max_target_positions)
    src_mask = model.source_mask(src)  # (B, 1, 1, S)
    memory = model.encode(src, src_mask)  # (B, S, D): one row per sentence, for all its beams
    cache = model.new_cache() if use_cache else None
    finished = [Finished(K) for _ in range(B)]
    active = list(range(B))  # original index of each active sentence
    tokens = torch.full((B, 1), ids.bos, dtype=torch.long, device=device)  # (N*k, T)
    beam_log_prob = torch.zeros(B, 1, device=device)  # (N, k): one hypothesis, BOS, at first
    step = 0
    while active:
        log_probs = next_log_probs(
            model, tokens, memory, src_mask, cache, step < min_length, ids
        )  # (N*k, V)
        log_probs += beam_log_prob.view(-1, 1)  # in place: one (N*k, V) tensor fewer per step
        result = beam_step(log_probs.view(len(active), beam_log_prob.size(1), -1), K, ids.eos)
        step += 1

        finish_eos_candidates(result, tokens, [finished[b] for b in active], alpha)
        at_limit = [i for i, b in enumerate(active) if max_lens[b] <= step]
        if at_limit:
            finish_live(result, tokens, at_limit, [finished[active[i]] for i in at_limit], alpha)
        best_live = result.live_log_prob[:, 0].tolist()  # (N,)
        if any(math.isnan(value) for value in best_live):
            raise NonFiniteScoreError()
        done = [
            max_lens[b] <= step
            or best_live[i] == -math.inf
            or (
                finished[b].full
                and best_live[i] / gnmt_length_penalty(max_lens[b], alpha) <= finished[b].worst
            )
            for i, b in enumerate(active)
        ]

        beam_log_prob, parent, next_token = (
            result.live_log_prob,
            result.live_parent,
            result.live_token,
        )  # (N, K) each
        if any(done):
            keep = [i for i, sentence_done in enumerate(done) if not sentence_done]
            active = [active[i] for i in keep]
            if not active:
                break
            keep_t = torch.tensor(keep, device=device)
            beam_log_prob, parent, next_token = (
                beam_log_prob[keep_t],
                parent[keep_t],
                next_token[keep_t],
            )  # (N', K) each
            memory, src_mask = memory[keep_t], src_mask[keep_t]  # (N', S, D), (N', 1, 1, S)
        rows = parent.view(-1)  # (N'*K,) the row each surviving hypothesis extends
        tokens = torch.cat([tokens[rows], next_token.view(-1, 1)], dim=1)  # (N'*K, T + 1)
        if cache is not None:
            cache.reorder(rows)
    return [finished[b].hypotheses[:nbest] for b in range(B)]


@torch.inference_mode()
def search(
    model: Seq2SeqModel, src: Tensor, config: DecodingConfig, use_cache: bool = True
) -> list[list[Hypothesis]]:
    """Decode a batch as `config` says: greedy for beam_size 1, beam search otherwise."""
    if config.beam_size == 1:
        return greedy_search(
            model, src, config.max_len_a, config.max_len_b, config.min_length, use_cache
        )
    return beam_search(
        model,
        src,
        config.beam_size,
        config.max_len_a,
        config.max_len_b,
        config.nbest,
        config.length_penalty,
        config.min_length,
        use_cache,
    )
