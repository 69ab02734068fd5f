"""What a checkpoint of training holds, so that a run resumes exactly where it stopped.

`Progress` counts where training stands (step, epoch, batch, time, the best validation);
`training_state` gathers it with the model, the weight average, the optimizer, the gradient
scaler and the random-number state into one checkpoint dictionary, and `restore_training_state`
puts a checkpoint back. `limit_reached` says which training limit the progress has reached.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transformer.config import Config, TrainingConfig, config_changes, config_to_dict
from transformer.errors import UserError
from transformer.training.ema import WeightAverage


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint to resume exactly."""

    step: int = 0
    epoch: int = 0
    next_batch: int = 0
    train_seconds: float = 0.0
    best_metric: float | None = None
    evals_without_improvement: int = 0
    kept: list[list[Any]] = field(default_factory=list)  # [[metric, file name], ...]
    skipped_steps: int = 0  # steps whose update was skipped: non-finite loss or gradient norm
    bad_steps_in_a_row: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, as `torch.load(weights_only=True)` requires."""
        return dataclasses.asdict(self)

    def record_validation(self, metric: float) -> bool:
        """Count a validation that scored `metric` (higher is better): whether it is the best."""
        improved = self.best_metric is None or metric > self.best_metric
        if improved:
            self.best_metric = metric
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        return improved


def limit_reached(cfg: TrainingConfig, progress: Progress) -> str | None:
    """Which of max_steps, max_epochs and max_time_minutes `progress` has reached, if any."""
    if progress.step >= cfg.max_steps:
        return f"reached training.max_steps ({cfg.max_steps})"
    if progress.epoch >= cfg.max_epochs:
        return f"reached training.max_epochs ({cfg.max_epochs})"
    if 0 < cfg.max_time_minutes * 60 <= progress.train_seconds:
        return f"reached training.max_time_minutes ({cfg.max_time_minutes:g})"
    return None


def training_state(
    config: Config,
    model: nn.Module,
    ema: WeightAverage | None,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    progress: Progress,
    device: torch.device,
) -> dict[str, Any]:
    """Everything needed to continue exactly where training stands.

    "model" holds the weights that translation, evaluation, averaging and export read: with
    training.ema_decay, the EMA weights, and the trained ones under "raw_model".
    """
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    averaged = {}
    if ema is not None:
        averaged = {"raw_model": model.state_dict(), "ema": ema.extra_state()}
    return {
        "model": ema.state_dict() if ema else model.state_dict(),
        **averaged,
        "config": config_to_dict(config),
        "step": progress.step,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "schedule": {"name": config.training.schedule, "step": progress.step},
        "progress": progress.to_dict(),
        "rng": rng,
    }


def restore_training_state(
    state: dict[str, Any],
    config: Config,
    model: nn.Module,
    ema: WeightAverage | None,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
) -> Progress:
    """Put `training_state`'s dictionary back into the given parts; the saved progress.

    A checkpoint without an average (training.ema_decay turned on for the resumption) leaves
    `ema` as it is: the caller starts it from the restored weights. A checkpoint of another
    model, or one that does not fit the parts, is a `UserError` that says what to do.
    """
    saved_model = state.get("config", {}).get("model")
    current = config_to_dict(config)["model"]
    changes = config_changes(saved_model, current, "model") if saved_model else []
    if changes:
        raise UserError(
            f"checkpoint holds another model than the run's config ({'; '.join(changes)}); "
            "resume with the config it was trained with, or start a new run directory"
        )
    try:
        # A run that averaged its weights trained on "raw_model" (see `training_state`)
        model.load_state_dict(state.get("raw_model", state["model"]))
        if ema is not None and "raw_model" in state:
            ema.load_state_dict(state["model"], int(state["ema"]["updates"]))
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        progress = Progress(**state["progress"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        reason = str(error).splitlines()[0][:200]
        raise UserError(
            f"checkpoint does not match this run ({reason}); resume with the run's own "
            "config or start a new run directory"
        ) from None
    return progress
