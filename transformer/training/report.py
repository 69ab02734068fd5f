"""What a training shows while it runs: the progress bar and the periodic log line."""

from __future__ import annotations

import logging
import math
import time

import torch
from torch import Tensor
from tqdm import tqdm

from transformer.config import TrainingConfig

logger = logging.getLogger(__name__)


class StepReport:
    """The progress bar and a log line every training.log_every steps, over a window of steps.

    The window's loss is summed on the device, so that a step does not wait for it; it is read
    (one wait) only every 10th step, when logging and before a validation.
    """

    def __init__(
        self, cfg: TrainingConfig, first_step: int, show_bar: bool, device: torch.device
    ) -> None:
        self.cfg = cfg
        self.bar = tqdm(
            total=cfg.max_steps,
            initial=first_step,
            disable=None if show_bar else True,  # None: only on a terminal
            dynamic_ncols=True,
            unit="step",
        )
        self.window_loss = torch.zeros((), device=device)
        self.window_tokens, self.window_start = 0, time.perf_counter()
        self.train_loss = math.nan  # per target token, over the last window read
        self.lr = 0.0  # of the last step

    def add(self, loss_sum: Tensor, tokens: int, lr: float) -> None:
        """Count one step: its summed loss, its target tokens and its learning rate."""
        self.window_loss += loss_sum
        self.window_tokens += tokens
        self.lr = lr
        self.bar.update(1)

    def show(self, step: int, epoch: int) -> dict[str, float] | None:
        """Refresh the bar's numbers and, every log_every steps, log them (`epoch` 0-based).

        Returns the numbers logged (loss, lr, target_tokens_per_s), or None between log steps.
        """
        cfg = self.cfg
        log_now = step % cfg.log_every == 0
        if log_now or step % cfg.eval_every == 0 or step % 10 == 0:
            self.train_loss = float(self.window_loss) / max(self.window_tokens, 1)  # waits
            rate = self.window_tokens / max(time.perf_counter() - self.window_start, 1e-9)
            self.bar.set_postfix(
                loss=f"{self.train_loss:.3f}", lr=f"{self.lr:.2e}", tok_s=f"{rate:,.0f}"
            )
        if log_now:
            logger.info(
                "step %d epoch %d: loss %.3f lr %.2e %.0f target tokens/s",
                step,
                epoch + 1,
                self.train_loss,
                self.lr,
                rate,
            )
            self.window_loss.zero_()
            self.window_tokens, self.window_start = 0, time.perf_counter()
            return {"loss": self.train_loss, "lr": self.lr, "target_tokens_per_s": rate}
        return None

    def close(self) -> None:
        """Close the progress bar."""
        self.bar.close()
