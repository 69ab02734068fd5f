"""Greedy and beam search: exact results on scripted models, agreement on tiny random ones."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

from transformer.config import DecodingConfig, ModelConfig
from transformer.data.special_ids import SpecialIds
from transformer.decoding.search import (
    Hypothesis,
    NonFiniteScoreError,
    beam_search,
    beam_step,
    gnmt_length_penalty,
    greedy_search,
    max_output_lengths,
    row_max,
    search,
)
from transformer.model import DecoderCache, Transformer

PAD, UNK, BOS, EOS = 0, 1, 2, 3
A, B, C = 4, 5, 6  # the scripted models' words
SCRIPT_VOCAB = 7

# --------------------------------------------------------------------------- scripted model

Script = dict[tuple[int, ...], dict[int, float]]  # prefix after BOS -> next-token probabilities

# Greedy takes A (0.5) and ends with 0.5 * 0.4 = 0.2; B then EOS has 0.4 * 0.9 = 0.36.
GREEDY_TRAP: Script = {
    (): {A: 0.5, B: 0.4, EOS: 0.1},
    (A,): {EOS: 0.4, A: 0.3, B: 0.3},
    (B,): {EOS: 0.9, A: 0.05, B: 0.05},
}
# [A] has 0.45 and [B C] 0.55 * 0.8 = 0.44: the shorter wins without a length penalty, the
# longer with alpha = 1 (ln 0.44 / (8/6) > ln 0.45 / (7/6)).
LENGTH_MATTERS: Script = {
    (): {A: 0.45, B: 0.55},
    (A,): {EOS: 1.0},
    (B,): {C: 0.8, EOS: 0.2},
    (B, C): {EOS: 1.0},
}
# With beam 1, [] (EOS first, 0.52) finishes at once; under alpha = 1 the live [A] (0.48)
# can still win and does: ln 0.48 / (7/6) > ln 0.52 / (6/6).
LATE_WINNER: Script = {
    (): {EOS: 0.52, A: 0.48},
    (A,): {EOS: 1.0},
}
# Exactly one output: [A A].
THREE_STEPS: Script = {(): {A: 1.0}, (A,): {A: 1.0}, (A, A): {EOS: 1.0}}
# EOS is the likeliest token after every prefix.
EAGER_EOS: Script = {}
EAGER_EOS_DEFAULT = {EOS: 0.6, A: 0.25, B: 0.15}


class ScriptedCache:
    """The scripted model's 'cache': the target tokens seen so far, one row per hypothesis."""

    def __init__(self) -> None:
        self.tokens: Tensor | None = None

    @property
    def length(self) -> int:
        """Number of cached positions."""
        return 0 if self.tokens is None else self.tokens.size(1)

    def reorder(self, indices: Tensor) -> None:
        """Keep rows `indices`."""
        assert self.tokens is not None
        self.tokens = self.tokens.index_select(0, indices)


class ScriptedModel:
    """Next-token probabilities read from a script chosen by the sentence's first source token.

    The encoder output carries that token, one row per sentence; the N / B consecutive
    decoder rows after row b·N/B read sentence b (its hypotheses), so a sentence whose
    memory is not dropped along with its hypotheses makes the others read the wrong script.
    Unknown prefixes end with EOS.
    """

    special_ids = SpecialIds()
    max_target_positions = None

    def __init__(self, scripts: dict[int, Script], default: dict[int, float] | None = None):
        self.scripts = scripts
        self.default = default or {EOS: 1.0}
        self.rows_per_call: list[int] = []

    def source_mask(self, src: Tensor) -> Tensor:
        """(B, S) -> (B, 1, 1, S)."""
        return (src != PAD)[:, None, None, :]

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """(B, S) -> (B, 1, 1): the script key of each sentence."""
        return src[:, :1, None].float()

    def new_cache(self) -> ScriptedCache:
        """An empty cache."""
        return ScriptedCache()

    def decode(
        self, tgt: Tensor, memory: Tensor, src_mask: Tensor, cache: ScriptedCache | None = None
    ) -> Tensor:
        """(N, T) -> logits (N, T, V) = log of the scripted probabilities."""
        assert memory.size(0) == src_mask.size(0) and tgt.size(0) % memory.size(0) == 0
        hypotheses_per_sentence = tgt.size(0) // memory.size(0)
        self.rows_per_call.append(tgt.size(0))
        full = tgt
        if cache is not None:
            full = tgt if cache.tokens is None else torch.cat([cache.tokens, tgt], dim=1)
            cache.tokens = full
        first = full.size(1) - tgt.size(1)
        logits = torch.full((tgt.size(0), tgt.size(1), SCRIPT_VOCAB), -math.inf)
        for row in range(tgt.size(0)):
            script = self.scripts[int(memory[row // hypotheses_per_sentence, 0, 0])]
            for j in range(tgt.size(1)):
                prefix = tuple(full[row, 1 : first + j + 1].tolist())
                for token, p in script.get(prefix, self.default).items():
                    logits[row, j, token] = math.log(p)
        return logits


def scripted(script: Script, default: dict[int, float] | None = None) -> ScriptedModel:
    """A scripted model that reads `script` for every sentence."""
    return ScriptedModel({A: script}, default)


ONE_SENTENCE = torch.tensor([[A, B]])


def as_pairs(hypotheses: list[Hypothesis]) -> list[tuple[list[int], float]]:
    """(tokens, score) of each hypothesis."""
    return [(h.tokens, h.score) for h in hypotheses]


def assert_same_hypotheses(actual: list[Hypothesis], expected: list[Hypothesis]) -> None:
    """Same tokens in the same order, scores and log-probs equal up to float error."""
    assert [h.tokens for h in actual] == [h.tokens for h in expected]
    for a, e in zip(actual, expected, strict=True):
        assert a.score == pytest.approx(e.score, abs=1e-5)
        assert a.log_prob == pytest.approx(e.log_prob, abs=1e-5)


# --------------------------------------------------------------------------- random models


class RisingEos(nn.Module):
    """A model whose EOS logit grows with the position, so sentences end at varied steps."""

    def __init__(self, model: Transformer, slope: float = 1.0, shift: float = 3.0) -> None:
        super().__init__()
        self.model = model
        self.special_ids = model.special_ids
        self.max_target_positions = model.max_target_positions
        self.slope = slope
        self.shift = shift

    def source_mask(self, src: Tensor) -> Tensor:
        """(B, S) -> (B, 1, 1, S)."""
        return self.model.source_mask(src)

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """(B, S) -> (B, S, D)."""
        return self.model.encode(src, src_mask)

    def new_cache(self) -> DecoderCache:
        """An empty cache."""
        return self.model.new_cache()

    def decode(
        self, tgt: Tensor, memory: Tensor, src_mask: Tensor, cache: DecoderCache | None = None
    ) -> Tensor:
        """The model's logits with slope * position - shift added to EOS: (N, T, V)."""
        start = 0 if cache is None else cache.length
        logits = self.model.decode(tgt, memory, src_mask, cache).clone()  # (N, T, V)
        positions = torch.arange(start, start + tgt.size(1), device=tgt.device)  # (T,)
        logits[..., EOS] += self.slope * positions - self.shift
        return logits


def tiny_model(
    seed: int = 0,
    tgt_vocab_size: int = 12,
    positional_encoding: str = "sinusoidal",
    max_positions: int = 64,
) -> RisingEos:
    """A random 2-layer model (d_model 32) in eval mode, EOS likelier with each step."""
    torch.manual_seed(seed)
    config = ModelConfig(
        src_vocab_size=20,
        tgt_vocab_size=tgt_vocab_size,
        d_model=32,
        num_heads=2,
        d_ff=64,
        num_encoder_layers=1,
        num_decoder_layers=2,
        dropout=0.0,
        tie_output_embeddings=False,
        positional_encoding=positional_encoding,
        max_positions=max_positions,
    )
    return RisingEos(Transformer(config).eval())


# Different lengths (with padding), so sentences finish at different steps.
SOURCES = torch.tensor(
    [
        [5, 6, 7, 8, 9, 10],
        [4, 5, 6, 0, 0, 0],
        [7, 7, 0, 0, 0, 0],
        [9, 8, 7, 6, 5, 4],
        [11, 12, 13, 14, 0, 0],
    ]
)
MAX_LEN_A, MAX_LEN_B = 1.0, 5


def teacher_forced_log_probs(
    model: RisingEos, src: Tensor, outputs: list[list[int]], eos: bool
) -> list[float]:
    """The model's log-prob of each equally long output (then EOS if `eos`) for one source."""
    target = torch.tensor([[BOS, *tokens, *([EOS] if eos else [])] for tokens in outputs])
    sources = src[None].expand(len(outputs), -1)  # (N, S)
    with torch.inference_mode():
        src_mask = model.source_mask(sources)
        logits = model.decode(target[:, :-1], model.encode(sources, src_mask), src_mask)
        log_probs = logits.float().log_softmax(dim=-1)  # (N, T, V)
    return log_probs.gather(2, target[:, 1:, None]).sum(dim=(1, 2)).tolist()


def teacher_forced_log_prob(model: RisingEos, src: Tensor, tokens: list[int], eos: bool) -> float:
    """The model's log-prob of `tokens` (then EOS if `eos`) after BOS, for one source."""
    return teacher_forced_log_probs(model, src, [tokens], eos)[0]


def source_lengths_limits(src: Tensor) -> list[int]:
    """Each sentence's maximum output length under MAX_LEN_A, MAX_LEN_B."""
    return [int(MAX_LEN_A * int((row != PAD).sum()) + MAX_LEN_B) for row in src]


# --------------------------------------------------------------------------- helpers


def test_gnmt_length_penalty_is_one_without_alpha_and_grows_with_length() -> None:
    assert gnmt_length_penalty(7, 0.0) == 1.0
    assert gnmt_length_penalty(1, 0.6) == 1.0
    assert gnmt_length_penalty(3, 0.6) == pytest.approx((8 / 6) ** 0.6)
    assert gnmt_length_penalty(10, 0.6) > gnmt_length_penalty(9, 0.6)


def test_max_output_lengths_count_non_pad_source_tokens_and_respect_the_cap() -> None:
    src = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0], [0, 0, 0, 0]])
    assert max_output_lengths(src, 1.5, 2, PAD) == [8, 5, 2]
    assert max_output_lengths(src, 1.5, 2, PAD, max_positions=6) == [6, 5, 2]
    assert max_output_lengths(src, 0.0, 0, PAD) == [1, 1, 1]


def test_beam_step_keeps_k_live_candidates_when_eos_candidates_rank_first() -> None:
    # Two beams; each has EOS as its best extension, so the best 2 candidates both end.
    beam_log_prob = torch.tensor([[0.0], [-1.0]])
    next_log_prob = torch.log(torch.tensor([[0.0, 0, 0, 0.7, 0.2, 0.1], [0.0, 0, 0, 0.9, 0.1, 0]]))
    step = beam_step((beam_log_prob + next_log_prob)[None], 2, eos_id=EOS)  # (1, 2, 6)
    assert step.eos_parent.tolist() == [[0, 1]]
    assert step.eos_log_prob.tolist()[0] == pytest.approx([math.log(0.7), math.log(0.9) - 1])
    assert step.live_token.tolist() == [[4, 5]]
    assert step.live_parent.tolist() == [[0, 0]]
    assert step.live_log_prob.tolist()[0] == pytest.approx([math.log(0.2), math.log(0.1)])


def test_beam_step_from_one_hypothesis_with_fewer_words_than_candidates_pads_with_minus_inf():
    # The first step extends one hypothesis per sentence; 3 words cannot fill 2K = 4 places.
    log_prob = torch.log(torch.tensor([[[0.5, 0.3, 0.2]]]))  # (1, 1, 3), EOS is id 2 here
    step = beam_step(log_prob, 2, eos_id=2)
    assert step.live_token.tolist() == [[0, 1]]
    assert step.eos_log_prob.tolist()[0] == [-math.inf, -math.inf]  # EOS ranks third
    step = beam_step(log_prob, 3, eos_id=2)
    assert step.eos_log_prob.tolist()[0][2] == pytest.approx(math.log(0.2))
    assert step.live_log_prob.tolist()[0] == pytest.approx(
        [math.log(0.5), math.log(0.3), -math.inf]
    )


# --------------------------------------------------------------------------- exact results


def test_beam_finds_the_better_sequence_that_greedy_misses() -> None:
    model = scripted(GREEDY_TRAP)
    ((greedy,),) = greedy_search(model, ONE_SENTENCE, 0.0, 10)
    assert greedy.tokens == [A]
    assert greedy.log_prob == pytest.approx(math.log(0.5 * 0.4))
    assert greedy.score == greedy.log_prob
    (beam,) = beam_search(model, ONE_SENTENCE, 2, 0.0, 10, nbest=2, length_penalty=0.0)
    expected = [([B], math.log(0.4 * 0.9)), ([A], math.log(0.5 * 0.4))]
    assert [h.tokens for h in beam] == [tokens for tokens, _ in expected]
    assert [h.score for h in beam] == pytest.approx([score for _, score in expected])
    assert greedy.ended and all(h.ended for h in beam)


def test_beam_results_are_exact_and_length_penalty_changes_the_winner() -> None:
    model = scripted(LENGTH_MATTERS)
    (plain,) = beam_search(model, ONE_SENTENCE, 2, 0.0, 10, nbest=2, length_penalty=0.0)
    assert [h.tokens for h in plain] == [[A], [B, C]]
    assert [h.score for h in plain] == pytest.approx([math.log(0.45), math.log(0.44)])
    (penalised,) = beam_search(model, ONE_SENTENCE, 2, 0.0, 10, nbest=2, length_penalty=1.0)
    # lp counts EOS: [B C] + EOS is 3 tokens, lp = (5 + 3) / 6; [A] + EOS: lp = 7 / 6.
    assert [h.tokens for h in penalised] == [[B, C], [A]]
    assert [h.score for h in penalised] == pytest.approx(
        [math.log(0.44) / (8 / 6), math.log(0.45) / (7 / 6)]
    )
    assert [h.log_prob for h in penalised] == pytest.approx([math.log(0.44), math.log(0.45)])


def test_beam_keeps_searching_while_a_live_hypothesis_can_still_win() -> None:
    model = scripted(LATE_WINNER)
    (penalised,) = beam_search(model, ONE_SENTENCE, 1, 0.0, 10, length_penalty=1.0)
    assert as_pairs(penalised) == [([A], pytest.approx(math.log(0.48) / (7 / 6)))]
    model.rows_per_call.clear()
    (plain,) = beam_search(model, ONE_SENTENCE, 1, 0.0, 10, length_penalty=0.0)
    assert as_pairs(plain) == [([], pytest.approx(math.log(0.52)))]
    assert len(model.rows_per_call) == 1  # nothing can beat [] once it finished


def test_min_length_forbids_eos_until_that_many_tokens() -> None:
    model = scripted(EAGER_EOS, EAGER_EOS_DEFAULT)
    ((greedy,),) = greedy_search(model, ONE_SENTENCE, 0.0, 10)
    assert greedy.tokens == []
    ((greedy,),) = greedy_search(model, ONE_SENTENCE, 0.0, 10, min_length=3)
    assert greedy.tokens == [A, A, A]
    assert greedy.log_prob == pytest.approx(3 * math.log(0.25) + math.log(0.6))
    (beam,) = beam_search(model, ONE_SENTENCE, 3, 0.0, 10, nbest=3, min_length=3)
    assert beam[0].tokens == [A, A, A]
    assert beam[0].score == pytest.approx(
        (3 * math.log(0.25) + math.log(0.6)) / gnmt_length_penalty(4, 0.6)
    )
    assert all(len(h.tokens) >= 3 for h in beam)


def test_search_stops_at_the_maximum_length_with_unfinished_hypotheses() -> None:
    model = scripted(EAGER_EOS, EAGER_EOS_DEFAULT)
    ((greedy,),) = greedy_search(model, ONE_SENTENCE, 0.0, 2, min_length=5)
    assert greedy.tokens == [A, A]
    assert greedy.log_prob == pytest.approx(2 * math.log(0.25))  # no EOS: it never ended
    assert not greedy.ended
    (beam,) = beam_search(model, ONE_SENTENCE, 2, 0.0, 2, nbest=2, min_length=5)
    assert as_pairs(beam[:1]) == [
        ([A, A], pytest.approx(2 * math.log(0.25) / gnmt_length_penalty(2, 0.6)))
    ]
    assert [len(h.tokens) for h in beam] == [2, 2]
    assert not any(h.ended for h in beam)


def test_scripted_batch_gives_each_sentence_its_own_exact_results() -> None:
    model = ScriptedModel({A: GREEDY_TRAP, B: LENGTH_MATTERS, C: LATE_WINNER})
    src = torch.tensor([[B, A, A], [C, 0, 0], [A, B, 0]])
    for alpha in (0.0, 1.0):
        batch = beam_search(model, src, 2, 0.0, 10, nbest=2, length_penalty=alpha)
        alone = [beam_search(model, row[None], 2, 0.0, 10, 2, alpha)[0] for row in src]
        for together, single in zip(batch, alone, strict=True):
            assert_same_hypotheses(together, single)
    batch = beam_search(model, src, 2, 0.0, 10, nbest=2, length_penalty=1.0)
    assert [h.tokens for h in batch[0]] == [[B, C], [A]]
    assert [h.tokens for h in batch[1]] == [[A], []]
    assert [h.tokens for h in batch[2]] == [[B], [A]]


def test_done_sentences_leave_the_batch() -> None:
    # LATE_WINNER's sentence ends after one greedy step (or two beam steps), THREE_STEPS' after 3.
    model = ScriptedModel({A: LATE_WINNER, B: THREE_STEPS})
    src = torch.tensor([[A], [B]])
    greedy_search(model, src, 0.0, 10)
    assert model.rows_per_call == [2, 1, 1]
    model.rows_per_call.clear()
    beam_search(model, src, 2, 0.0, 10, length_penalty=0.0)
    assert model.rows_per_call == [2, 4, 2]  # the first step decodes one row per sentence


# --------------------------------------------------------------------------- random models


def test_beam_size_one_equals_greedy() -> None:
    model = tiny_model(seed=0)
    greedy = greedy_search(model, SOURCES, MAX_LEN_A, MAX_LEN_B)
    beam = beam_search(model, SOURCES, 1, MAX_LEN_A, MAX_LEN_B, length_penalty=0.0)
    lengths = [len(h.tokens) for (h,) in greedy]
    assert len(set(lengths)) > 1  # sentences end at different steps
    for (g,), (b,) in zip(greedy, beam, strict=True):
        assert b.tokens == g.tokens
        assert b.score == pytest.approx(g.score, abs=1e-5)
        assert b.log_prob == pytest.approx(g.log_prob, abs=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_wide_beam_finds_the_best_sequence_found_by_brute_force(alpha: float) -> None:
    model = tiny_model(seed=1, tgt_vocab_size=5)  # PAD, UNK, BOS, EOS and one word
    src = torch.tensor([7, 8, 9])
    max_len = 4
    words = [UNK, BOS, 4]  # every token but PAD (never produced) and EOS
    scored = []
    for length in range(max_len + 1):
        ended = length < max_len  # at the maximum length a hypothesis stops without EOS
        outputs = [list(tokens) for tokens in itertools.product(words, repeat=length)]
        log_probs = teacher_forced_log_probs(model, src, outputs, eos=ended)
        penalty = gnmt_length_penalty(length + ended, alpha)
        scored += [(lp / penalty, tokens) for lp, tokens in zip(log_probs, outputs, strict=True)]
    scored.sort(key=lambda pair: pair[0], reverse=True)
    (beam,) = beam_search(model, src[None], 81, 0.0, max_len, nbest=5, length_penalty=alpha)
    assert [h.tokens for h in beam] == [tokens for _, tokens in scored[:5]]
    assert [h.score for h in beam] == pytest.approx([score for score, _ in scored[:5]], abs=1e-5)


def test_cached_and_uncached_decoding_give_the_same_outputs() -> None:
    model = tiny_model(seed=0)
    for cached, uncached in zip(
        greedy_search(model, SOURCES, MAX_LEN_A, MAX_LEN_B),
        greedy_search(model, SOURCES, MAX_LEN_A, MAX_LEN_B, use_cache=False),
        strict=True,
    ):
        assert_same_hypotheses(cached, uncached)
    for cached, uncached in zip(
        beam_search(model, SOURCES, 3, MAX_LEN_A, MAX_LEN_B, nbest=3),
        beam_search(model, SOURCES, 3, MAX_LEN_A, MAX_LEN_B, nbest=3, use_cache=False),
        strict=True,
    ):
        assert_same_hypotheses(cached, uncached)


def test_batch_gives_the_same_outputs_as_one_sentence_at_a_time() -> None:
    model = tiny_model(seed=1)
    greedy = greedy_search(model, SOURCES, MAX_LEN_A, MAX_LEN_B)
    beam = beam_search(model, SOURCES, 3, MAX_LEN_A, MAX_LEN_B, nbest=3)
    assert len({len(h.tokens) for (h,) in greedy}) > 1  # sentences end at different steps
    for i, row in enumerate(SOURCES):
        single = row[row != PAD][None]  # unpadded
        assert_same_hypotheses(greedy_search(model, single, MAX_LEN_A, MAX_LEN_B)[0], greedy[i])
        (alone,) = beam_search(model, single, 3, MAX_LEN_A, MAX_LEN_B, nbest=3)
        assert_same_hypotheses(alone, beam[i])


def test_nbest_lists_are_sorted_and_scores_are_normalised_model_log_probs() -> None:
    model = tiny_model(seed=0)
    alpha = 0.6
    limits = source_lengths_limits(SOURCES)
    results = beam_search(model, SOURCES, 4, MAX_LEN_A, MAX_LEN_B, nbest=4, length_penalty=alpha)
    for src, hypotheses, limit in zip(SOURCES, results, limits, strict=True):
        assert len(hypotheses) == 4
        scores = [h.score for h in hypotheses]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hypotheses}) == 4
        for h in hypotheses:
            ended = len(h.tokens) < limit
            expected = teacher_forced_log_prob(model, src, h.tokens, ended)
            assert h.log_prob == pytest.approx(expected, abs=1e-4)
            assert h.score == pytest.approx(
                h.log_prob / gnmt_length_penalty(len(h.tokens) + ended, alpha)
            )


def test_greedy_log_probs_are_the_model_log_probs_of_its_tokens() -> None:
    model = tiny_model(seed=0)
    limits = source_lengths_limits(SOURCES)
    for src, (h,), limit in zip(
        SOURCES, greedy_search(model, SOURCES, MAX_LEN_A, MAX_LEN_B), limits, strict=True
    ):
        ended = len(h.tokens) < limit
        assert h.log_prob == pytest.approx(
            teacher_forced_log_prob(model, src, h.tokens, ended), abs=1e-4
        )


def test_every_sentence_stops_at_its_own_maximum_length() -> None:
    model = tiny_model(seed=0)
    limits = source_lengths_limits(SOURCES)
    greedy = greedy_search(model, SOURCES, MAX_LEN_A, MAX_LEN_B, min_length=100)
    assert [len(h.tokens) for (h,) in greedy] == limits
    beam = beam_search(model, SOURCES, 2, MAX_LEN_A, MAX_LEN_B, nbest=2, min_length=100)
    assert [[len(h.tokens) for h in hs] for hs in beam] == [[n, n] for n in limits]
    for hypotheses, limit in zip(
        beam_search(model, SOURCES, 2, MAX_LEN_A, MAX_LEN_B, nbest=2), limits, strict=True
    ):
        assert all(len(h.tokens) <= limit for h in hypotheses)


def test_learned_positions_cap_the_output_length() -> None:
    model = tiny_model(seed=0, positional_encoding="learned", max_positions=6)
    greedy = greedy_search(model, SOURCES, 1.0, 100, min_length=100)
    assert [len(h.tokens) for (h,) in greedy] == [6] * len(SOURCES)
    beam = beam_search(model, SOURCES, 2, 1.0, 100, min_length=100)
    assert [len(hs[0].tokens) for hs in beam] == [6] * len(SOURCES)


def test_search_with_beam_size_one_is_greedy_and_otherwise_beam() -> None:
    model = tiny_model(seed=0)
    config = DecodingConfig(beam_size=1, max_len_a=MAX_LEN_A, max_len_b=MAX_LEN_B)
    greedy = greedy_search(model, SOURCES, MAX_LEN_A, MAX_LEN_B)
    assert search(model, SOURCES, config) == greedy
    config = DecodingConfig(beam_size=3, nbest=2, max_len_a=MAX_LEN_A, max_len_b=MAX_LEN_B)
    beam = beam_search(model, SOURCES, 3, MAX_LEN_A, MAX_LEN_B, nbest=2)
    assert [[h.tokens for h in hs] for hs in search(model, SOURCES, config)] == [
        [h.tokens for h in hs] for hs in beam
    ]


def test_search_does_not_change_the_model_mode() -> None:
    model = tiny_model(seed=0)
    model.train()
    greedy_search(model, SOURCES[:1], 0.0, 2)
    beam_search(model, SOURCES[:1], 2, 0.0, 2)
    assert model.training and model.model.training


@pytest.mark.parametrize("width", [8000, 64, 65, 7, 130])
def test_row_max_equals_torch_max_with_first_index_on_ties(width: int) -> None:
    g = torch.Generator().manual_seed(width)
    x = torch.randint(-3, 3, (6, width), generator=g).float()  # many ties
    x[0] = -math.inf
    x[0, width // 2] = 0.0  # one finite value in a row of -inf
    x[1, :] = 1.0  # every position tied
    values, indices = row_max(x)
    expected = x.max(dim=-1)
    assert torch.equal(values, expected.values)
    assert torch.equal(indices, expected.indices)
    assert indices[1] == 0


@pytest.mark.parametrize("beam_size", [1, 3])
def test_a_model_with_non_finite_parameters_gives_a_clear_error(beam_size: int) -> None:
    model = tiny_model(seed=0)
    with torch.no_grad():
        model.model.output_proj.weight.fill_(math.nan)  # as after diverged training
    config = DecodingConfig(beam_size=beam_size, max_len_a=MAX_LEN_A, max_len_b=MAX_LEN_B)
    with pytest.raises(NonFiniteScoreError, match="not finite"):
        search(model, SOURCES, config)
