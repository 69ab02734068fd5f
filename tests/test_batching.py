"""Token-budget batches (which examples go together) and padding them into a `Batch`."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from transformer.data.batching import Example, TokenBatchSampler, collate, collate_flat
from transformer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


def random_lengths(count: int, seed: int, most: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(1, most, count), rng.integers(1, most, count)


def batch_cost(batch: list[int], src: np.ndarray, tgt: np.ndarray) -> int:
    """Tokens of the larger padded tensor of a batch: size * longest sequence in it."""
    return len(batch) * int(max(src[batch].max(), tgt[batch].max()))


@pytest.mark.parametrize("batch_tokens", [60, 200, 1000])
def test_batches_fit_the_token_budget_with_padding_and_cover_each_example_once(
    batch_tokens: int,
) -> None:
    src, tgt = random_lengths(500, seed=1)
    sampler = TokenBatchSampler(src, tgt, batch_tokens, seed=3)
    for epoch in range(3):
        batches = sampler.batches(epoch)
        assert all(batch_cost(b, src, tgt) <= batch_tokens for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(500))


def test_batches_are_filled_close_to_the_budget() -> None:
    src, tgt = random_lengths(2000, seed=2, most=30)
    batches = TokenBatchSampler(src, tgt, 1000, seed=0).batches(0)
    costs = [batch_cost(b, src, tgt) for b in batches]
    assert np.mean(costs) > 0.9 * 1000


def test_example_over_the_budget_gets_a_batch_of_its_own_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = np.array([5, 300, 5, 6, 250])
    tgt = np.array([5, 10, 6, 5, 5])
    sampler = TokenBatchSampler(src, tgt, 100, seed=0)
    with caplog.at_level(logging.WARNING, logger="transformer.data.batching"):
        first, second = sampler.batches(0), sampler.batches(1)
    assert [1] in first and [4] in first and [1] in second
    assert caplog.text.count("longer than batch_tokens 100") == 1
    assert "the longest has 300 tokens" in caplog.text


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_sharded_batches_cover_everything_without_overlap_in_equal_numbers(
    world_size: int,
) -> None:
    src, tgt = random_lengths(301, seed=4)
    for epoch in range(3):
        shards = [
            TokenBatchSampler(src, tgt, 250, seed=9, rank=r, world_size=world_size).batches(epoch)
            for r in range(world_size)
        ]
        assert len({len(shard) for shard in shards}) == 1
        seen = [i for shard in shards for batch in shard for i in batch]
        assert sorted(seen) == list(range(301))
        assert all(batch_cost(b, src, tgt) <= 250 for shard in shards for b in shard)


def test_one_rank_gets_every_batch_of_the_unsharded_order() -> None:
    src, tgt = random_lengths(300, seed=5)
    single = TokenBatchSampler(src, tgt, 400, seed=1).batches(0)
    assert len(single) % 2 == 0  # so sharding in two splits nothing
    halves = [TokenBatchSampler(src, tgt, 400, seed=1, rank=r, world_size=2) for r in (0, 1)]
    assert halves[0].batches(0) == single[0::2] and halves[1].batches(0) == single[1::2]


def test_batches_are_reshuffled_each_epoch_but_deterministic_for_a_seed() -> None:
    src, tgt = random_lengths(400, seed=6)
    one = TokenBatchSampler(src, tgt, 300, seed=5)
    two = TokenBatchSampler(src, tgt, 300, seed=5)
    other_seed = TokenBatchSampler(src, tgt, 300, seed=6)
    assert one.batches(0) == two.batches(0) and one.batches(3) == two.batches(3)
    assert one.batches(0) != one.batches(1)
    assert one.batches(0) != other_seed.batches(0)


def test_equal_length_examples_are_grouped_differently_each_epoch() -> None:
    src, tgt = random_lengths(400, seed=6, most=8)  # many ties in length
    sampler = TokenBatchSampler(src, tgt, 40, seed=5)
    groups = [{tuple(sorted(b)) for b in sampler.batches(epoch)} for epoch in (0, 1)]
    assert groups[0] != groups[1]


def test_iteration_and_length_follow_set_epoch() -> None:
    src, tgt = random_lengths(200, seed=7)
    sampler = TokenBatchSampler(src, tgt, 300, seed=2)
    sampler.set_epoch(4)
    assert list(sampler) == sampler.batches(4) and len(sampler) == len(sampler.batches(4))
    sampler.set_epoch(5)
    assert list(sampler) == sampler.batches(5)


def test_unshuffled_batches_come_in_length_order_for_any_epoch() -> None:
    src, tgt = random_lengths(200, seed=8)
    sampler = TokenBatchSampler(src, tgt, 300, shuffle=False)
    batches = sampler.batches(0)
    assert batches == sampler.batches(7)
    order = [i for b in batches for i in b]
    costs = np.maximum(src, tgt)[order]
    assert sorted(order) == list(range(200)) and np.all(np.diff(costs) >= 0)


def test_collate_pads_source_and_shifts_target_behind_bos() -> None:
    examples = [
        Example(7, np.array([11, 12, EOS_ID], np.int32), np.array([21, EOS_ID], np.int32)),
        Example(3, np.array([13, EOS_ID], np.int32), np.array([22, 23, 24, EOS_ID], np.int32)),
    ]
    batch = collate(examples, PAD_ID)
    P, E, B = PAD_ID, EOS_ID, BOS_ID
    assert batch.src.tolist() == [[11, 12, E], [13, E, P]]
    assert batch.tgt_in.tolist() == [[B, 21, P, P], [B, 22, 23, 24]]
    assert batch.tgt_out.tolist() == [[21, E, P, P], [22, 23, 24, E]]
    assert batch.src.dtype == batch.tgt_in.dtype == batch.tgt_out.dtype == torch.int64
    assert batch.indices == [7, 3] and batch.num_target_tokens == 6 and len(batch) == 2


def test_collate_flat_equals_collate_of_the_sliced_pairs_in_any_order() -> None:
    rng = np.random.default_rng(11)
    src_lengths, tgt_lengths = rng.integers(1, 9, 20), rng.integers(1, 9, 20)
    src_offsets = np.concatenate([[0], np.cumsum(src_lengths)])
    tgt_offsets = np.concatenate([[0], np.cumsum(tgt_lengths)])
    src_tokens = rng.integers(4, 50, src_offsets[-1]).astype(np.int32)
    tgt_tokens = rng.integers(4, 50, tgt_offsets[-1]).astype(np.int32)
    indices = [13, 2, 19, 2, 7]
    fast = collate_flat(src_tokens, src_offsets, tgt_tokens, tgt_offsets, indices)
    slow = collate(
        [
            Example(
                i,
                src_tokens[src_offsets[i] : src_offsets[i + 1]],
                tgt_tokens[tgt_offsets[i] : tgt_offsets[i + 1]],
            )
            for i in indices
        ]
    )
    for name in ("src", "tgt_in", "tgt_out"):
        assert torch.equal(getattr(fast, name), getattr(slow, name))
    assert fast.indices == slow.indices == indices
    assert fast.num_target_tokens == int(tgt_lengths[indices].sum())


def test_batch_to_device_keeps_every_field() -> None:
    example = Example(0, np.array([5, EOS_ID], np.int32), np.array([6, EOS_ID], np.int32))
    batch = collate([example])
    moved = batch.to(torch.device("cpu"))
    assert torch.equal(moved.src, batch.src) and torch.equal(moved.tgt_out, batch.tgt_out)
    assert moved.indices == [0] and moved.num_target_tokens == 2
