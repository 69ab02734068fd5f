"""What a diverged training says: what became non-finite, and a setting that would train.

The training loop skips a step whose loss or gradient norm is not finite; after
`training.max_bad_steps` such steps in a row, or parameters that hold non-finite values, it
stops with a `DivergenceError` whose message names the learning rate to lower, the value to
try, and the command that continues from the last checkpoint (nothing non-finite is saved).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transformer.config import TrainingConfig
from transformer.errors import UserError


class DivergenceError(UserError):
    """The loss, the gradients or the parameters became non-finite; nothing of it was saved."""


def lower_after_divergence(key: str, value: float) -> float:
    """The training.`key` (lr or lr_scale) to suggest after a divergence at `value`.

    A tenth of it, and at most the default: halving a value far too large (lr 1e6) would
    take twenty runs that diverge again.
    """
    default = {field.name: field.default for field in dataclasses.fields(TrainingConfig)}[key]
    return min(value / 10, default)


def divergence_error(
    training: TrainingConfig, step: int, what: str, last: Path | None, saved_step: int
) -> DivergenceError:
    """The error for a training that diverged at `step` because of `what`; `last` is the
    checkpoint to continue from (written at `saved_step`), None when there is none."""
    key = "lr_scale" if training.schedule == "noam" else "lr"
    value = getattr(training, key)
    lower = lower_after_divergence(key, value)
    since = (
        f"continue from {last} (step {saved_step}) with --resume --set training.{key}={lower:g}"
        if last is not None
        else f"start again with --set training.{key}={lower:g}"
    )
    return DivergenceError(
        f"training diverged at step {step}: {what}; nothing non-finite was saved. Lower "
        f"training.{key} (now {value:g}) or raise training.warmup_steps (now "
        f"{training.warmup_steps}): {since}"
    )
