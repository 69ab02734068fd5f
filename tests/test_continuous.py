"""Continuous batching: sentences that join and leave a decode under way get what decoding
them alone gives, and the decode holds no more than its budget and its oldest sentence."""

from __future__ import annotations

import random
from collections.abc import Hashable

import pytest
import torch

from transformer.config import DecodingConfig, ModelConfig
from transformer.decoding.continuous import ContinuousSearch
from transformer.decoding.search import Hypothesis, beam_search, greedy_search, search
from transformer.model import Transformer, build_model
from transformer.model.cache import KVCache
from transformer.model.positions import (
    LearnedPositionalEncoding,
    RotaryPositionalEncoding,
    SinusoidalPositionalEncoding,
)

EOS = 3
SWITCHES = [
    {},
    {"positional_encoding": "rope"},
    {"positional_encoding": "learned"},
    {"num_kv_heads": 2, "norm_position": "pre", "norm": "rmsnorm", "activation": "swiglu"},
]
EOS_BIAS = {"activation": 0.3}  # the pre-norm model ends early with the default 1.5


def random_model(fast: bool = True, seed: int = 1, **switches: object) -> Transformer:
    """A random 2-layer model whose EOS is likely enough that sentences end at many lengths."""
    torch.manual_seed(seed)
    config = ModelConfig(
        src_vocab_size=30,
        tgt_vocab_size=24,
        d_model=32,
        num_heads=4,
        d_ff=64,
        num_encoder_layers=1,
        num_decoder_layers=2,
        dropout=0.0,
        tie_output_embeddings=False,
        output_bias=True,
        max_positions=64,
        **switches,
    )
    model = build_model(config, fast).eval()
    bias = next((value for key, value in EOS_BIAS.items() if key in switches), 1.5)
    with torch.no_grad():
        model.output_proj.bias[EOS] = bias
    return model


def random_sources(rng: random.Random, count: int) -> list[list[int]]:
    """`count` sources of 1 to 11 pieces, then EOS."""
    return [
        [rng.randrange(4, 30) for _ in range(rng.randrange(1, 12))] + [EOS] for _ in range(count)
    ]


def decoding(beam_size: int) -> DecodingConfig:
    return DecodingConfig(
        beam_size=beam_size,
        nbest=min(beam_size, 2),
        max_len_a=1.2,
        max_len_b=4,
        length_penalty=1.0,
        min_length=2,
    )


def decode_continuously(
    search: ContinuousSearch, sources: list[list[int]], arrivals: list[int]
) -> dict[Hashable, list[Hypothesis]]:
    """Submit source i before step arrivals[i]; step until everything finished."""
    results: dict[Hashable, list[Hypothesis]] = {}
    order = sorted(range(len(sources)), key=lambda i: arrivals[i])
    step = 0
    while order or len(search):
        while order and arrivals[order[0]] <= step:
            i = order.pop(0)
            search.submit(i, sources[i])
        for key, hypotheses in search.step():
            assert key not in results, "a sentence finished twice"
            results[key] = hypotheses
        step += 1
    return results


def alone(model: Transformer, source: list[int], config: DecodingConfig) -> list[Hypothesis]:
    """What the batch search gives the sentence decoded by itself."""
    return search(model, torch.tensor([source]), config)[0]


def assert_same(got: list[Hypothesis], expected: list[Hypothesis]) -> None:
    """The same outputs, in the same order, with scores equal to float tolerance."""
    assert [(h.tokens, h.ended) for h in got] == [(h.tokens, h.ended) for h in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.score == pytest.approx(e.score, rel=1e-5, abs=1e-5)
        assert g.log_prob == pytest.approx(e.log_prob, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("beam_size", [1, 4])
@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: ",".join(s) or "paper")
def test_each_sentence_gets_what_decoding_it_alone_gives_whatever_joins_or_leaves(
    beam_size: int, switches: dict[str, object]
) -> None:
    rng = random.Random(len(switches) * 10 + beam_size)
    model = random_model(**switches)
    sources = random_sources(rng, 14)
    arrivals = [rng.randrange(0, 16) for _ in sources]
    config = decoding(beam_size)
    search = ContinuousSearch(model, config, max_tokens=10**6)
    results = decode_continuously(search, sources, arrivals)
    assert sorted(results) == list(range(len(sources)))
    lengths = {len(hypotheses[0].tokens) for hypotheses in results.values()}
    assert len(lengths) >= 3, "the sentences should end at many different steps"
    assert search.stats.largest >= 4, "sentences should have been decoded together"
    for i, source in enumerate(sources):
        assert_same(results[i], alone(model, source, config))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_the_paper_model_without_fast_paths_gives_the_same_as_alone(beam_size: int) -> None:
    rng = random.Random(7)
    model = random_model(fast=False)
    sources = random_sources(rng, 8)
    arrivals = [rng.randrange(0, 8) for _ in sources]
    config = decoding(beam_size)
    results = decode_continuously(ContinuousSearch(model, config, 10**6), sources, arrivals)
    for i, source in enumerate(sources):
        assert_same(results[i], alone(model, source, config))


@pytest.mark.parametrize("beam_size", [1, 4])
def test_sentences_submitted_together_get_the_batch_searchs_results(beam_size: int) -> None:
    rng = random.Random(3)
    model = random_model()
    sources = random_sources(rng, 10)
    config = decoding(beam_size)
    results = decode_continuously(ContinuousSearch(model, config, 10**6), sources, [0] * 10)
    width = max(map(len, sources))
    src = torch.tensor([s + [0] * (width - len(s)) for s in sources])
    if beam_size == 1:
        batch = greedy_search(model, src, config.max_len_a, config.max_len_b, config.min_length)
    else:
        batch = beam_search(
            model,
            src,
            beam_size,
            config.max_len_a,
            config.max_len_b,
            config.nbest,
            config.length_penalty,
            config.min_length,
        )
    for i in range(len(sources)):
        assert_same(results[i], batch[i])


def test_the_token_budget_bounds_the_sentences_decoded_at_once() -> None:
    rng = random.Random(4)
    sources = [[rng.randrange(4, 30) for _ in range(5)] + [EOS] for _ in range(20)]  # 6 tokens
    search = ContinuousSearch(random_model(), decoding(1), max_tokens=18)
    for i, source in enumerate(sources):
        search.submit(i, source)
    most = 0
    while len(search):
        search.step()
        most = max(most, search.live)
        assert search.live * 6 <= 18
    assert most == 3, "the budget should be filled"


def test_a_sentence_longer_than_the_budget_is_still_decoded_when_nothing_else_is() -> None:
    model = random_model()
    search = ContinuousSearch(model, decoding(1), max_tokens=3)
    search.submit("long", [5, 6, 7, 8, 9, EOS])
    search.submit("short", [5, EOS])
    finished = {}
    while len(search):
        assert search.live <= 1
        finished.update(search.step())
    assert set(finished) == {"long", "short"}


def test_the_cache_holds_no_more_slots_than_the_oldest_live_sentence_has_steps() -> None:
    rng = random.Random(5)
    model = random_model()
    search = ContinuousSearch(model, decoding(4), max_tokens=10**6)
    sources = random_sources(rng, 30)
    step, started = 0, {}
    pending = list(enumerate(sources))
    while pending or len(search):
        for _ in range(rng.randrange(0, 3)):  # zero to two arrivals a step
            if pending:
                key, source = pending.pop(0)
                search.submit(key, source)
                started[key] = step
        for key, _ in search.step():
            del started[key]
        step += 1
        if started:
            oldest = step - min(started.values())
            assert search.slots <= oldest
        else:
            assert search.slots == 0


def test_an_idle_search_steps_to_nothing_and_refuses_an_empty_source() -> None:
    search = ContinuousSearch(random_model(), decoding(1), max_tokens=100)
    assert search.step() == []
    assert len(search) == 0
    with pytest.raises(ValueError, match="no source ids"):
        search.submit("empty", [])


# ------------------------------------------------------------------ the model's side


@pytest.mark.parametrize(
    "encoding",
    [
        SinusoidalPositionalEncoding(8),
        SinusoidalPositionalEncoding(8, precomputed=4),  # past the table: computed
        LearnedPositionalEncoding(8, 16),
    ],
    ids=["sinusoidal", "sinusoidal-computed", "learned"],
)
def test_a_first_position_per_row_equals_each_rows_own_offset(encoding: torch.nn.Module) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 2, 8)
    offsets = torch.tensor([0, 3, 7])
    together = encoding(x, offsets)
    for row, offset in enumerate(offsets.tolist()):
        torch.testing.assert_close(together[row], encoding(x[row : row + 1], offset)[0])


def test_rotary_positions_per_row_equal_each_rows_own_offset() -> None:
    torch.manual_seed(0)
    rotary = RotaryPositionalEncoding(8, precomputed=5)
    x = torch.randn(3, 2, 2, 8)  # (B, H, T, d_k)
    offsets = torch.tensor([0, 2, 6])  # the last one past the precomputed table
    together = rotary(x, offsets)
    for row, offset in enumerate(offsets.tolist()):
        torch.testing.assert_close(together[row], rotary(x[row : row + 1], offset)[0])


def test_joined_rows_are_left_padded_masked_and_trimmed_when_the_old_rows_leave() -> None:
    old, new = KVCache(), KVCache()
    old.append(torch.ones(2, 1, 3, 4), torch.ones(2, 1, 3, 4))  # 2 rows, 3 slots
    new.append(torch.zeros(1, 1, 0, 4), torch.zeros(1, 1, 0, 4))  # 1 row, no slot yet
    old.join(new)
    assert old.rows == 3 and old.length == 3
    assert old.next_position.tolist() == [3, 3, 0]
    mask = old.key_mask(1)[:, 0, 0]  # (rows, 4 slots)
    assert mask.tolist() == [[True] * 4, [True] * 4, [False, False, False, True]]
    k, _ = old.append(torch.full((3, 1, 1, 4), 2.0), torch.full((3, 1, 1, 4), 2.0))
    assert k.shape == (3, 1, 4, 4)
    assert bool((k[:2, :, :3] == 1.0).all()) and bool((k[2, :, :3] == 0.0).all())
    assert bool((k[:, :, 3] == 2.0).all())
    old.select(torch.tensor([2]))  # the old rows leave
    old.trim()
    assert old.length == 1 and old.start is None
    assert old.next_position == 1
    assert bool((old.k == 2.0).all())
