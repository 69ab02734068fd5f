"""Learning-rate schedules: pure functions of the optimizer step (1-based)."""

from __future__ import annotations

import math

from transformer.config import TrainingConfig


def noam_lr(step: int, d_model: int, warmup_steps: int, scale: float = 1.0) -> float:
    """The paper's schedule: lr = scale · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)."""
    step = max(step, 1)
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)


def inverse_sqrt_lr(step: int, peak_lr: float, warmup_steps: int) -> float:
    """Linear warm-up to `peak_lr`, then decay ∝ 1/√step (fairseq's inverse_sqrt)."""
    step = max(step, 1)
    if warmup_steps and step < warmup_steps:
        return peak_lr * step / warmup_steps
    return peak_lr * math.sqrt(max(warmup_steps, 1) / step)


def cosine_lr(
    step: int,
    peak_lr: float,
    warmup_steps: int,
    total_steps: int,
    min_lr: float = 0.0,
    time_spent: float = 0.0,
) -> float:
    """Linear warm-up to `peak_lr`, then half a cosine down to `min_lr` at the end of the run.

    The end is `total_steps`, or the end of the time budget when that comes first:
    `time_spent` is the share of it already used (0 to 1; 0 when there is none). The decay
    follows whichever of the two is further along, so a run stopped by its time limit ends
    at `min_lr` as a run stopped by its step limit does. Both count from the end of the
    warm-up, so the decay starts at `peak_lr` however long the warm-up took: the warm-up's
    share of the time is estimated as `warmup_steps / step` of the time spent so far (steps
    take about equally long), which needs no clock reading kept from the past.
    """
    step = max(step, 1)
    if warmup_steps and step < warmup_steps:
        return peak_lr * step / warmup_steps
    by_steps = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, max(by_steps, _time_after_warmup(step, warmup_steps, time_spent)))
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def _time_after_warmup(step: int, warmup_steps: int, time_spent: float) -> float:
    """The share of the time after the warm-up that is used: 0 when the warm-up ends, 1 at the
    end of the budget. With w = warmup_steps / step · time_spent the warm-up's share,
    (time_spent - w) / (1 - w). Called once the warm-up is over (step >= warmup_steps)."""
    if time_spent >= 1.0:
        return 1.0
    warmup_share = time_spent * warmup_steps / step
    return (time_spent - warmup_share) / (1.0 - warmup_share)


def time_spent(train_seconds: float, config: TrainingConfig) -> float:
    """The share of `training.max_time_minutes` used after `train_seconds` (0: no limit)."""
    budget = config.max_time_minutes * 60
    return min(1.0, train_seconds / budget) if budget > 0 else 0.0


def follows_the_clock(config: TrainingConfig) -> bool:
    """Whether the learning rate depends on the time spent (cosine with a time limit)."""
    return config.schedule == "cosine" and config.max_time_minutes > 0


def learning_rate(
    step: int, config: TrainingConfig, d_model: int, train_seconds: float = 0.0
) -> float:
    """The learning rate of optimizer step `step` under `config.schedule`.

    `train_seconds` (the training time so far) matters to the cosine schedule only, when
    `training.max_time_minutes` limits the run: see `cosine_lr`.
    """
    if config.schedule == "noam":
        return noam_lr(step, d_model, config.warmup_steps, config.lr_scale)
    if config.schedule == "inverse_sqrt":
        return inverse_sqrt_lr(step, config.lr, config.warmup_steps)
    if config.schedule == "cosine":
        spent = time_spent(train_seconds, config)
        return cosine_lr(
            step, config.lr, config.warmup_steps, config.max_steps, config.min_lr, spent
        )
    if config.schedule == "constant":
        return config.lr
    raise ValueError(f"unknown schedule {config.schedule!r}")
