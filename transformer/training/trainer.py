"""Training: the optimisation loop and its step, checkpointing and resumption.

What a checkpoint holds lives in state.py, validation in validation.py, which step files are
kept in retention.py, the progress bar and log line in report.py; the loss in loss.py, the
learning rate in schedule.py.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from transformer.config import Config
from transformer.data.batching import Batch, TokenBatchSampler
from transformer.data.corpus import EncodedCorpus
from transformer.data.sampling import SampledEpochs
from transformer.data.special_ids import PAD_ID
from transformer.data.tokenizer import TokenizerPair
from transformer.model import Transformer
from transformer.runtime.device import autocast_dtype
from transformer.training.checkpoint import (
    METRICS_FILE,
    checkpoint_dir,
    load_checkpoint,
    save_checkpoint,
)
from transformer.training.distributed import DistributedContext
from transformer.training.divergence import DivergenceError, divergence_error
from transformer.training.ema import WeightAverage
from transformer.training.loss import TranslationLoss
from transformer.training.report import StepReport
from transformer.training.retention import CheckpointRetention
from transformer.training.schedule import follows_the_clock, learning_rate
from transformer.training.state import (
    Progress,
    limit_reached,
    restore_training_state,
    training_state,
)
from transformer.training.tensorboard import TensorBoardLog, validation_samples
from transformer.training.validation import MetricsLog, ValidationResult, Validator, log_validation

logger = logging.getLogger(__name__)

DIVERGED = "diverged"


@dataclass
class StopRequest:
    """Asks a training to stop at the next step boundary; the CLI sets it from a signal."""

    signum: int | None = None


class Trainer:
    """Runs the optimisation loop over token-budget batches, validating and checkpointing."""

    def __init__(
        self,
        config: Config,
        model: Transformer,
        tokenizers: TokenizerPair,
        train_data: EncodedCorpus,
        valid_data: EncodedCorpus | None,
        run_dir: Path,
        device: torch.device,
        context: DistributedContext | None = None,
    ) -> None:
        self.config = config
        self.cfg = config.training
        self.model = model  # the plain module: its state is what checkpoints hold
        self.tokenizers = tokenizers
        self.train_data = train_data
        self.valid_data = valid_data
        self.run_dir = Path(run_dir)
        self.device = device
        self.context = context or DistributedContext()
        self.progress = Progress()
        self.stop = StopRequest()
        self.stop_reason = ""  # why `train` stopped, for the last log line
        self.saved_step = -1  # the step last.pt holds (when this process wrote it)
        self.validated_step = -1  # the step of the last validation (or where `train` began)
        self.amp_dtype = autocast_dtype(self.cfg.precision, device)
        self.optimizer = self._optimizer()
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.sampler = self._batch_sampler(train_data)
        self.sampled: SampledEpochs | None = None  # subword regularization (tokenizer.sampling)
        if config.tokenizer.sampling is not None:
            self.sampled = SampledEpochs(
                train_data,
                tokenizers,
                config.tokenizer,
                self.cfg.seed,
                config.data.max_length,
                self.context.world_size,
            )
        self.ema = WeightAverage(model, self.cfg.ema_decay) if self.cfg.ema_decay else None
        self.network = self._network()
        self.validator: Validator | None = None
        if valid_data is not None:
            self.validator = Validator(
                model, valid_data, tokenizers, self.cfg, config.decoding, device, self.autocast
            )
        self.metrics = MetricsLog(self.run_dir / METRICS_FILE)
        self.retention = CheckpointRetention(checkpoint_dir(self.run_dir), self.cfg.keep_best)
        self.grad_norm = torch.zeros((), device=device)  # of the last step, read at log steps
        self.board: TensorBoardLog | None = None  # training.tensorboard, on rank 0
        if self.cfg.tensorboard and self.context.is_main:
            samples = validation_samples(valid_data, self.cfg.eval_samples)
            self.board = TensorBoardLog(run_dir, model, tokenizers, samples, config.decoding)

    def _optimizer(self) -> torch.optim.Adam:
        """Adam with the config's betas, eps and weight decay; the schedule sets its lr."""
        return torch.optim.Adam(
            self.model.parameters(),
            lr=0.0,
            betas=(self.cfg.optimizer_betas[0], self.cfg.optimizer_betas[1]),
            eps=self.cfg.optimizer_eps,
            weight_decay=self.cfg.weight_decay,
        )

    def _batch_sampler(self, data: EncodedCorpus) -> TokenBatchSampler:
        """This rank's token-budget batches of `data`, shuffled per epoch from the seed."""
        return TokenBatchSampler(
            data.src_lengths,
            data.tgt_lengths,
            batch_tokens=self.cfg.batch_tokens,
            seed=self.cfg.seed,
            shuffle=True,
            rank=self.context.rank,
            world_size=self.context.world_size,
        )

    def _network(self) -> nn.Module:
        """The model with its loss, wrapped for DDP and compiled as the config asks."""
        network: nn.Module = TranslationLoss(
            self.model, self.cfg.label_smoothing, PAD_ID, fast=self.cfg.fast
        )
        if self.context.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            network = nn.parallel.DistributedDataParallel(network, device_ids=ids)
        if self.cfg.compile:
            network = torch.compile(network)
        return network

    # ------------------------------------------------------------------ the loop

    def train(self, stop: StopRequest | None = None) -> Progress:
        """Train until a limit, early stopping, a stop request, or divergence.

        The limits are max_steps, max_epochs and max_time_minutes; time counts across
        resumptions (`progress.train_seconds` is saved in checkpoints), and each is checked
        before the first step too, so a resumed run with a raised limit continues and one
        with a reached limit stops at once. `stop` (set from a signal) ends training at the
        next step boundary with last.pt saved. Too many non-finite steps in a row raise
        `DivergenceError`. `self.stop_reason` and the last log line say why training stopped.
        """
        self.stop = stop or StopRequest()
        show_bar = self.cfg.progress_bar and self.context.is_main
        self.report = StepReport(self.cfg, self.progress.step, show_bar, self.device)
        self.validated_step = self.progress.step
        if self.board is not None:
            self.board.start(self.progress.step)
        try:
            started = time.perf_counter() - self.progress.train_seconds
            reason = self.limit_reached()
            while reason is None:
                reason = self.train_epoch(started)
            self.report.close()
            if self.sampled is not None:
                self.sampled.close()  # the next epoch's segmentation, begun ahead, is not needed
            self.finish(reason)
        finally:
            if self.sampled is not None:
                self.sampled.close()  # idempotent: also after a fault or Ctrl-C
            if self.board is not None:
                self.board.close()
        return self.progress

    def train_epoch(self, started: float) -> str | None:
        """Train on the rest of the epoch: why to stop, or None when it ended within the limits.

        `started` is the `time.perf_counter()` at which training would have begun had it
        never paused.
        """
        progress = self.progress
        if self.sampled is not None:  # subword regularization: the epoch's own segmentation
            self.train_data = self.sampled.corpus(progress.epoch)
            self.sampler = self._batch_sampler(self.train_data)
        batches = self.sampler.batches(progress.epoch)
        while progress.next_batch < len(batches):
            group = batches[progress.next_batch : progress.next_batch + self.cfg.accumulate_steps]
            loss_sum, tokens = self.train_step(group)
            progress.next_batch += len(group)
            progress.train_seconds = time.perf_counter() - started
            reason = self.after_step(loss_sum, tokens)
            if reason is not None:
                return reason
        progress.epoch += 1
        progress.next_batch = 0
        return self.limit_reached()

    def after_step(self, loss_sum: Tensor, tokens: int) -> str | None:
        """Report the step, then validate or save when due; why to stop now, if training should.

        A validation uses the training loss of the last window the report read.
        """
        cfg, progress = self.cfg, self.progress
        self.report.add(loss_sum, tokens, self.optimizer.param_groups[0]["lr"])
        if progress.bad_steps_in_a_row >= cfg.max_bad_steps:
            return DIVERGED
        logged = self.report.show(progress.step, progress.epoch)
        if logged is not None and self.board is not None:
            logged.update(grad_norm=float(self.grad_norm), skipped_steps=progress.skipped_steps)
            self.board.log_step(progress.step, logged)
        if progress.step % cfg.eval_every == 0:
            self.validated_step = progress.step
            if self.evaluate_and_save():
                return (
                    f"early stopping: no improvement in {cfg.early_stopping_patience} validations "
                    "(training.early_stopping_patience)"
                )
        elif cfg.save_every and progress.step % cfg.save_every == 0:
            self.save(None)
        if self.stop_requested():
            return f"interrupted by {signal.Signals(self.stop.signum).name}"
        return self.limit_reached()

    def finish(self, reason: str) -> None:
        """Save what stopping for `reason` leaves unsaved, and log the last line.

        An interruption saves last.pt; a limit or early stopping validates the last step
        (unless it just was); a divergence saves nothing and raises `DivergenceError`.
        """
        self.stop_reason = reason
        if reason == DIVERGED:
            self.log_stop()
            raise self.diverged(
                f"{self.cfg.max_bad_steps} steps in a row had a non-finite loss or gradient norm "
                f"(training.max_bad_steps; {self.progress.skipped_steps} skipped in all)"
            )
        if reason.startswith("interrupted"):
            if self.saved_step != self.progress.step:
                self.save(None)
        elif self.validated_step != self.progress.step:
            self.evaluate_and_save()
        self.log_stop()

    def limit_reached(self) -> str | None:
        """Which of max_steps, max_epochs and max_time_minutes is reached, if any."""
        return limit_reached(self.cfg, self.progress)

    def stop_requested(self) -> bool:
        """Whether to stop now; with several processes, all agree (every 10th step)."""
        requested = self.stop.signum is not None
        if not self.context.enabled:
            return requested
        if self.progress.step % 10 or not self.context.any_rank(requested, self.device):
            return False
        if self.stop.signum is None:  # another process was asked
            self.stop.signum = signal.SIGTERM
        return True

    def log_stop(self) -> None:
        """The last log line of every training: where and why it stopped."""
        logger.info(
            "training stopped at step %d (epoch %d) after %.1f s: %s",
            self.progress.step,
            self.progress.epoch + 1,
            self.progress.train_seconds,
            self.stop_reason,
        )

    # ------------------------------------------------------------------ the step

    def autocast(self) -> contextlib.AbstractContextManager:
        """The one mixed-precision context (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, batches: list[list[int]]) -> tuple[Tensor, int]:
        """One optimizer step over `batches` (gradient accumulation).

        Returns the summed loss as a tensor on the device and the number of target tokens.
        A step whose loss or gradient norm is not finite changes nothing but the step count
        (reading the two flags is the step's one wait for the GPU).
        """
        if not self.model.training:  # validation switched to eval; .train() walks every module
            self.network.train()
        pin = self.device.type == "cuda"
        collated = []
        for indices in batches:
            batch = self.train_data.collate(indices, PAD_ID, self.model.special_ids.bos)
            collated.append((batch.pin_memory() if pin else batch).to(self.device))
        num_tokens = sum(batch.num_target_tokens for batch in collated)
        loss_total = self.backward(collated, num_tokens)
        step = self.progress.step + 1
        seconds = 0.0
        if follows_the_clock(self.cfg):  # every rank must use rank 0's clock, or they drift
            seconds = self.context.broadcast_number(self.progress.train_seconds, self.device)
        lr = learning_rate(step, self.cfg, self.config.model.d_model, seconds)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.update(step, loss_total)
        self.progress.step = step
        return loss_total, num_tokens

    def backward(self, collated: list[Batch], num_tokens: int) -> Tensor:
        """Accumulate the gradients of the per-token loss over `collated`; the summed loss.

        With DDP the gradients are averaged across processes once, after the last batch.
        """
        loss_total = torch.zeros((), device=self.device)
        for k, batch in enumerate(collated):
            last = k == len(collated) - 1
            sync = self.context.enabled and not last
            with self.network.no_sync() if sync else contextlib.nullcontext():  # type: ignore[operator]
                with self.autocast():
                    loss = self.network(batch.src, batch.tgt_in, batch.tgt_out)  # summed
                self.scaler.scale(loss / max(num_tokens, 1)).backward()
            loss_total += loss.detach()
        return loss_total

    def update(self, step: int, loss_total: Tensor) -> None:
        """Apply the accumulated gradients, unless the loss or their norm is not finite."""
        self.scaler.unscale_(self.optimizer)  # true gradients for the norm (no-op in fp32)
        norm = self.grad_norm = self.gradient_norm()
        loss_finite, norm_finite = torch.stack([loss_total.isfinite(), norm.isfinite()]).tolist()
        if loss_finite and norm_finite:
            self.scaler.step(self.optimizer)
            if self.ema is not None:
                self.ema.update(self.model)
            self.progress.bad_steps_in_a_row = 0
        elif not loss_finite or not self.scaler.is_enabled():
            # With fp16 an overflowing gradient alone is the scaler's business: it skips the
            # step and lowers its scale. Anything else non-finite is a bad step.
            self.progress.skipped_steps += 1
            self.progress.bad_steps_in_a_row += 1
            logger.warning(
                "step %d: non-finite %s; update skipped (%d in a row; training.max_bad_steps %d)",
                step,
                "loss" if not loss_finite else "gradient norm",
                self.progress.bad_steps_in_a_row,
                self.cfg.max_bad_steps,
            )
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def gradient_norm(self) -> Tensor:
        """The gradients' total norm (before clipping them to training.clip_grad_norm, if set)."""
        if self.cfg.clip_grad_norm > 0:
            return nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return nn.utils.get_total_norm(grads)

    # ------------------------------------------------------------------ validation

    def validate(self) -> ValidationResult | None:
        """Validate on the valid corpus (the EMA weights when training.ema_decay is set);
        None without one, or when a stop request cut it short."""
        if self.validator is None:
            return None
        with self.ema.applied(self.model) if self.ema else contextlib.nullcontext():
            return self.validator.validate(lambda: self.stop.signum is not None)

    def evaluate_and_save(self) -> bool:
        """Validate (rank 0), checkpoint, and say whether early stopping ends `train`."""
        stop = False
        if self.context.is_main:
            result = self.validate()
            improved = False
            if result is not None:
                progress = self.progress
                log_validation(progress.step, result)
                self.metrics.append(
                    result,
                    step=progress.step,
                    epoch=progress.epoch + 1,
                    elapsed=progress.train_seconds,
                    lr=self.report.lr,
                    train_loss=self.report.train_loss,
                )
                if self.board is not None:
                    self.board.log_validation(progress.step, result)
                improved = self.progress.record_validation(result.metric())
                stop = self.patience_ran_out()
            self.save(result, improved)
        return self.context.broadcast_flag(stop, self.device)

    def patience_ran_out(self) -> bool:
        """Whether training.early_stopping_patience validations in a row brought no improvement."""
        patience = self.cfg.early_stopping_patience
        if patience and self.progress.evals_without_improvement >= patience:
            logger.info("early stopping: no improvement in %d validations", patience)
            return True
        return False

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where training stands (see `training_state`)."""
        return training_state(
            self.config,
            self.model,
            self.ema,
            self.optimizer,
            self.scaler,
            self.progress,
            self.device,
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore model, average, optimizer, scaler, progress and random-number states."""
        parts = (self.config, self.model, self.ema, self.optimizer, self.scaler, self.device)
        self.progress = restore_training_state(state, *parts)
        if self.ema is not None and "raw_model" not in state:
            self.ema = WeightAverage(self.model, self.cfg.ema_decay)  # from the restored weights

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint written by `save`."""
        instead = f"start a new run, or restore {path.name} from a copy"
        self.load_state_dict(load_checkpoint(path, map_location=self.device, instead=instead))
        self.saved_step = self.progress.step
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            path,
            self.progress.step,
            self.progress.epoch + 1,
            self.progress.next_batch,
        )

    def save(self, result: ValidationResult | None = None, improved: bool = False) -> None:
        """Write last.pt; after a validation also the k best step files, and best.pt if improved.

        The state is written once; the other names are hard links to it (each made atomically).
        """
        if not self.context.is_main:
            return
        if not self.parameters_finite():
            raise self.diverged("the parameters hold non-finite values")
        plan = None
        if result is not None:
            plan = self.retention.plan(self.progress.kept, self.progress.step, result.metric())
            self.progress.kept = plan.kept
        state = self.state_dict()
        if result is not None:
            state["metrics"] = {"loss": result.loss, "bleu": result.bleu, "chrf": result.chrf}
        last = checkpoint_dir(self.run_dir) / "last.pt"
        save_checkpoint(state, last)
        self.retention.apply(last, plan, improved)
        self.saved_step = self.progress.step

    def parameters_finite(self) -> bool:
        """Whether every parameter is finite (one wait for the device)."""
        checks = [parameter.isfinite().all() for parameter in self.model.parameters()]
        return bool(torch.stack(checks).all())

    def diverged(self, what: str) -> DivergenceError:
        """The error that ends a diverged training: what happened, and which setting to lower."""
        last = checkpoint_dir(self.run_dir) / "last.pt" if self.saved_step >= 0 else None
        return divergence_error(self.cfg, self.progress.step, what, last, self.saved_step)
