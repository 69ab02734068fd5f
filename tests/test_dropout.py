"""Dropout's fast path (`transformer.model.fast`): the keyed mask drops each value with
probability p, independently, scales the survivors by 1 / (1 − p), and draws from the seeded
generator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transformer.model.fast import KeyedDropout, keyed_dropout, keyed_dropout_mask

N = 1 << 20  # values: the dropped fraction is then within ±0.0015 (5 σ) of p = 0.1


def test_outside_training_and_at_p_zero_dropout_is_the_identity() -> None:
    x = torch.randn(3, 5)
    assert keyed_dropout(x, 0.3, training=False) is x
    assert keyed_dropout(x, 0.0, training=True) is x


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_each_value_is_dropped_with_probability_p_and_the_rest_scaled(p: float) -> None:
    torch.manual_seed(0)
    x = torch.rand(N) + 1.0  # never 0 before dropout
    out = keyed_dropout(x, p, training=True)
    dropped = out == 0
    sigma = (p * (1 - p) / N) ** 0.5
    assert abs(dropped.float().mean().item() - p) < 5 * sigma
    torch.testing.assert_close(out[~dropped], x[~dropped] / (1 - p))


def test_every_position_of_a_random_word_is_dropped_equally_often() -> None:
    # Each 64-bit word gives four 16-bit keys: a key whose top bit were never set (the
    # default range of random_) would drop nothing at its position.
    torch.manual_seed(1)
    dropped = keyed_dropout_mask(torch.ones(N), 0.1) == 0  # (N,)
    by_position = dropped.view(-1, 4).float().mean(0)  # (4,)
    sigma = (0.1 * 0.9 / (N // 4)) ** 0.5
    assert (by_position - 0.1).abs().max().item() < 5 * sigma


def test_neighbouring_values_are_dropped_independently() -> None:
    torch.manual_seed(2)
    dropped = (keyed_dropout_mask(torch.ones(N), 0.5) == 0).float()
    both = (dropped[:-1] * dropped[1:]).mean().item()  # 0.25 if independent
    assert abs(both - 0.25) < 5 * (0.25 * 0.75 / N) ** 0.5


def test_the_gradient_is_the_mask() -> None:
    torch.manual_seed(3)
    x = torch.randn(7, 33, requires_grad=True)  # 231 values: not a multiple of four
    out = keyed_dropout(x, 0.2, training=True)
    out.sum().backward()
    torch.testing.assert_close(x.grad, (out != 0).float() / 0.8)


def test_the_mask_follows_the_seeded_generator() -> None:
    x = torch.ones(1000)
    torch.manual_seed(4)
    first, second = keyed_dropout(x, 0.1, True), keyed_dropout(x, 0.1, True)
    torch.manual_seed(4)
    assert torch.equal(keyed_dropout(x, 0.1, True), first)
    assert not torch.equal(first, second)


def test_p_one_drops_everything() -> None:
    assert (keyed_dropout(torch.randn(10), 1.0, training=True) == 0).all()


def test_the_layer_drops_only_in_training_mode_and_checks_p() -> None:
    layer, x = KeyedDropout(0.5), torch.ones(1000)
    assert isinstance(layer, nn.Dropout)
    assert (layer(x) == 0).any()
    assert torch.equal(layer.eval()(x), x)
    with pytest.raises(ValueError, match="dropout probability"):
        KeyedDropout(1.5)
