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
    step: int, peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0
) -> float:
    """Linear warm-up to `peak_lr`, then half a cosine down to `min_lr` at `total_steps`."""
    step = max(step, 1)
    if warmup_steps and step < warmup_steps:
        return peak_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def learning_rate(step: int, config: TrainingConfig, d_model: int) -> float:
    """The learning rate of optimizer step `step` under `config.schedule`."""
    if config.schedule == "noam":
        return noam_lr(step, d_model, config.warmup_steps, config.lr_scale)
    if config.schedule == "inverse_sqrt":
        return inverse_sqrt_lr(step, config.lr, config.warmup_steps)
    if config.schedule == "cosine":
        return cosine_lr(step, config.lr, config.warmup_steps, config.max_steps, config.min_lr)
    if config.schedule == "constant":
        return config.lr
    raise ValueError(f"unknown schedule {config.schedule!r}")
