"""Learning-rate schedules: the paper's formula, warm-up, decay."""

import dataclasses
import math

import pytest

from transformer.config import TrainingConfig
from transformer.training.schedule import cosine_lr, inverse_sqrt_lr, learning_rate, noam_lr


def test_noam_follows_the_papers_formula():
    d_model, warmup = 512, 4000
    for step in (1, 100, 4000, 10_000):
        expected = d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
        assert noam_lr(step, d_model, warmup) == pytest.approx(expected)


def test_noam_peaks_at_the_end_of_warmup():
    rates = [noam_lr(step, 256, 100) for step in range(1, 400)]
    assert max(rates) == pytest.approx(noam_lr(100, 256, 100))
    assert rates.index(max(rates)) == 99


def test_inverse_sqrt_warms_up_linearly_then_decays_as_inverse_square_root():
    assert inverse_sqrt_lr(50, 1e-3, 100) == pytest.approx(5e-4)
    assert inverse_sqrt_lr(100, 1e-3, 100) == pytest.approx(1e-3)
    assert inverse_sqrt_lr(400, 1e-3, 100) == pytest.approx(5e-4)


def test_cosine_reaches_min_lr_at_the_last_step():
    assert cosine_lr(100, 1e-3, 100, 1100, 1e-5) == pytest.approx(1e-3)
    assert cosine_lr(600, 1e-3, 100, 1100, 1e-5) == pytest.approx((1e-3 + 1e-5) / 2)
    assert cosine_lr(1100, 1e-3, 100, 1100, 1e-5) == pytest.approx(1e-5)
    assert cosine_lr(5000, 1e-3, 100, 1100, 1e-5) == pytest.approx(1e-5)


def test_learning_rate_dispatches_on_the_configured_schedule():
    config = TrainingConfig(schedule="constant", lr=3e-4)
    assert learning_rate(7, config, 512) == 3e-4
    config = TrainingConfig(schedule="noam", lr_scale=2.0, warmup_steps=10)
    assert learning_rate(10, config, 64) == pytest.approx(2.0 * 64**-0.5 * 10**-0.5)
    assert all(math.isfinite(learning_rate(s, config, 64)) for s in range(0, 50))


def test_cosine_with_a_time_limit_follows_whichever_of_steps_and_time_is_further_along() -> None:
    # A run that will stop by its clock long before max_steps still decays to min_lr at the
    # end: half the time gone is halfway down the cosine, all of it is min_lr.
    config = TrainingConfig(schedule="cosine", lr=1e-3, min_lr=1e-5, warmup_steps=100,
                            max_steps=100_000, max_time_minutes=10)  # fmt: skip
    assert learning_rate(200, config, 512, train_seconds=0) == pytest.approx(1e-3, rel=1e-5)
    # step 200 after 400 s: the 100 warm-up steps took about 200 s, so 200 of the 400 s
    # after the warm-up are gone: halfway down the cosine
    assert learning_rate(200, config, 512, train_seconds=400) == pytest.approx((1e-3 + 1e-5) / 2)
    assert learning_rate(200, config, 512, train_seconds=600) == pytest.approx(1e-5)
    assert learning_rate(200, config, 512, train_seconds=900) == pytest.approx(1e-5)
    # warm-up is counted in steps whatever the clock says
    assert learning_rate(50, config, 512, train_seconds=300) == pytest.approx(5e-4)
    # the steps still end it when they come first
    short = dataclasses.replace(config, max_steps=1100)
    assert learning_rate(1100, short, 512, train_seconds=1) == pytest.approx(1e-5)


def test_only_cosine_with_a_time_limit_reads_the_clock() -> None:
    for schedule in ("noam", "inverse_sqrt", "constant"):
        config = TrainingConfig(schedule=schedule, max_time_minutes=10)
        assert learning_rate(500, config, 512, 0.0) == learning_rate(500, config, 512, 599.0)
    config = TrainingConfig(schedule="cosine", max_time_minutes=0, max_steps=1000)
    assert learning_rate(500, config, 512, 0.0) == learning_rate(500, config, 512, 1e6)


def test_a_time_limited_cosine_starts_its_decay_at_the_peak_however_long_the_warm_up_took() -> None:
    # A slow machine may spend half its budget warming up: the decay must start from the
    # peak there (no jump down at the end of the warm-up), fall steadily, and end at min_lr.
    config = TrainingConfig(schedule="cosine", lr=1e-3, min_lr=0.0, warmup_steps=400,
                            max_steps=100_000, max_time_minutes=25)  # fmt: skip
    budget = 25 * 60
    assert learning_rate(400, config, 512, train_seconds=0.5 * budget) == pytest.approx(1e-3)
    assert learning_rate(399, config, 512, train_seconds=0.5 * budget) == pytest.approx(
        1e-3 * 399 / 400
    )
    # steps at an even pace: step s comes at s / 800 of the budget
    rates = [learning_rate(s, config, 512, train_seconds=s / 800 * budget) for s in range(400, 801)]
    assert all(later <= earlier for earlier, later in zip(rates, rates[1:], strict=False))
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert rates[200] == pytest.approx(0.5e-3)  # step 600: halfway from warm-up to the end
