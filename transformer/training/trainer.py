"""Training: the loss, the optimisation loop, validation, checkpoints and resumption.

Shape legend: B batch, S source length, T target length, V target vocabulary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from transformer.config import Config, TrainingConfig, config_changes, config_to_dict
from transformer.data.batching import TokenBatchSampler
from transformer.data.corpus import EncodedCorpus
from transformer.data.tokenizer import PAD_ID, TokenizerPair
from transformer.decoding.scoring import corpus_scores
from transformer.decoding.search import greedy_search
from transformer.errors import UserError
from transformer.files import temporary_path
from transformer.model import Transformer
from transformer.runtime.device import autocast_dtype
from transformer.training.checkpoint import (
    METRICS_FILE,
    checkpoint_dir,
    load_checkpoint,
    save_checkpoint,
)
from transformer.training.distributed import DistributedContext
from transformer.training.loss import TranslationLoss, label_smoothed_loss
from transformer.training.schedule import follows_the_clock, learning_rate

logger = logging.getLogger(__name__)

DIVERGED = "diverged"


@dataclass
class ValidationResult:
    """What one validation measured."""

    loss: float
    perplexity: float
    bleu: float | None = None
    chrf: float | None = None
    samples: list[tuple[str, str, str]] = field(default_factory=list)

    def metric(self) -> float:
        """Higher is better: BLEU when computed, else the negative loss."""
        return self.bleu if self.bleu is not None else -self.loss


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


@dataclass
class StopRequest:
    """Asks a training to stop at the next step boundary; the CLI sets it from a signal."""

    signum: int | None = None


class DivergenceError(UserError):
    """The loss, the gradients or the parameters became non-finite; nothing of it was saved."""


def _lower_after_divergence(key: str, value: float) -> float:
    """The training.`key` (lr or lr_scale) to suggest after a divergence at `value`.

    A tenth of it, and at most the default: halving a value far too large (lr 1e6) would
    take twenty runs that diverge again.
    """
    default = {field.name: field.default for field in dataclasses.fields(TrainingConfig)}[key]
    return min(value / 10, default)


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
        self.amp_dtype = autocast_dtype(self.cfg.precision, device)
        self.optimizer = torch.optim.Adam(
            model.parameters(),
            lr=0.0,
            betas=(self.cfg.optimizer_betas[0], self.cfg.optimizer_betas[1]),
            eps=self.cfg.optimizer_eps,
            weight_decay=self.cfg.weight_decay,
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.sampler = TokenBatchSampler(
            train_data.src_lengths,
            train_data.tgt_lengths,
            batch_tokens=self.cfg.batch_tokens,
            seed=self.cfg.seed,
            shuffle=True,
            rank=self.context.rank,
            world_size=self.context.world_size,
        )
        self.network: nn.Module = TranslationLoss(
            model, self.cfg.label_smoothing, PAD_ID, fast=self.cfg.fast
        )
        if self.context.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.network = nn.parallel.DistributedDataParallel(self.network, device_ids=ids)
        if self.cfg.compile:
            self.network = torch.compile(self.network)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where training stands."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": self.model.state_dict(),
            "config": config_to_dict(self.config),
            "step": self.progress.step,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": {"name": self.cfg.schedule, "step": self.progress.step},
            "progress": self.progress.to_dict(),
            "rng": rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore model, optimizer, scaler, progress and random-number states."""
        saved_model = state.get("config", {}).get("model")
        current = config_to_dict(self.config)["model"]
        changes = config_changes(saved_model, current, "model") if saved_model else []
        if changes:
            raise UserError(
                f"checkpoint holds another model than the run's config ({'; '.join(changes)}); "
                "resume with the config it was trained with, or start a new run directory"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.progress = Progress(**state["progress"])
            torch.set_rng_state(state["rng"]["torch"].cpu())
            if self.device.type == "cuda" and "cuda" in state["rng"]:
                torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            reason = str(error).splitlines()[0][:200]
            raise UserError(
                f"checkpoint does not match this run ({reason}); resume with the run's own "
                "config or start a new run directory"
            ) from None

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
        directory = checkpoint_dir(self.run_dir)
        keep_name, dropped = None, []
        if result is not None and self.cfg.keep_best > 0:
            keep_name = f"step_{self.progress.step:08d}.pt"
            ranked = sorted(
                self.progress.kept + [[result.metric(), keep_name]], key=lambda kv: -kv[0]
            )
            self.progress.kept, dropped = ranked[: self.cfg.keep_best], ranked[self.cfg.keep_best :]
            if all(name != keep_name for _, name in self.progress.kept):
                keep_name = None
        state = self.state_dict()
        if result is not None:
            state["metrics"] = {"loss": result.loss, "bleu": result.bleu, "chrf": result.chrf}
        last = directory / "last.pt"
        save_checkpoint(state, last)
        if keep_name:
            link_checkpoint(last, directory / keep_name)
        for _, name in dropped:
            (directory / name).unlink(missing_ok=True)
        if improved:
            link_checkpoint(last, directory / "best.pt")
        self.saved_step = self.progress.step

    def parameters_finite(self) -> bool:
        """Whether every parameter is finite (one wait for the device)."""
        checks = [parameter.isfinite().all() for parameter in self.model.parameters()]
        return bool(torch.stack(checks).all())

    def diverged(self, what: str) -> DivergenceError:
        """The error that ends a diverged training: what happened, and which setting to lower."""
        key = "lr_scale" if self.cfg.schedule == "noam" else "lr"
        value = getattr(self.cfg, key)
        lower = _lower_after_divergence(key, value)
        last = checkpoint_dir(self.run_dir) / "last.pt"
        since = (
            f"continue from {last} (step {self.saved_step}) with "
            f"--resume --set training.{key}={lower:g}"
            if self.saved_step >= 0
            else f"start again with --set training.{key}={lower:g}"
        )
        return DivergenceError(
            f"training diverged at step {self.progress.step}: {what}; nothing non-finite was "
            f"saved. Lower training.{key} (now {value:g}) or raise training.warmup_steps (now "
            f"{self.cfg.warmup_steps}): {since}"
        )

    # ------------------------------------------------------------------ steps

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
            batch = self.train_data.collate(indices, PAD_ID)
            collated.append((batch.pin_memory() if pin else batch).to(self.device))
        num_tokens = sum(batch.num_target_tokens for batch in collated)
        loss_total = torch.zeros((), device=self.device)
        for k, batch in enumerate(collated):
            last = k == len(collated) - 1
            sync = self.context.enabled and not last
            with self.network.no_sync() if sync else contextlib.nullcontext():  # type: ignore[operator]
                with self.autocast():
                    loss = self.network(batch.src, batch.tgt_in, batch.tgt_out)  # summed
                self.scaler.scale(loss / max(num_tokens, 1)).backward()
            loss_total += loss.detach()
        step = self.progress.step + 1
        seconds = 0.0
        if follows_the_clock(self.cfg):  # every rank must use rank 0's clock, or they drift
            seconds = self.context.broadcast_number(self.progress.train_seconds, self.device)
        lr = learning_rate(step, self.cfg, self.config.model.d_model, seconds)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.unscale_(self.optimizer)  # true gradients for the norm (no-op in fp32)
        norm = self.gradient_norm()
        loss_finite, norm_finite = torch.stack([loss_total.isfinite(), norm.isfinite()]).tolist()
        if loss_finite and norm_finite:
            self.scaler.step(self.optimizer)
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
        self.progress.step = step
        return loss_total, num_tokens

    def gradient_norm(self) -> Tensor:
        """The gradients' total norm (before clipping them to training.clip_grad_norm, if set)."""
        if self.cfg.clip_grad_norm > 0:
            return nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return nn.utils.get_total_norm(grads)

    # ------------------------------------------------------------------ validation

    @torch.inference_mode()
    def validate(self) -> ValidationResult | None:
        """Loss, perplexity and (optionally) BLEU/chrF of greedy translations of the valid set."""
        if self.valid_data is None or len(self.valid_data) == 0:
            return None
        self.model.eval()
        sampler = TokenBatchSampler(
            self.valid_data.src_lengths,
            self.valid_data.tgt_lengths,
            batch_tokens=self.cfg.batch_tokens,
            seed=0,
            shuffle=False,
        )
        nll_sum, tokens = 0.0, 0
        hypotheses: dict[int, str] = {}
        for indices in sampler.batches(0):
            if self.stop.signum is not None:  # asked to stop: save without waiting for this
                logger.info("validation cut short: stopping")
                return None
            batch = self.valid_data.collate(indices, PAD_ID).to(self.device)
            with self.autocast():
                logits = self.model(batch.src, batch.tgt_in)
                nll_sum += float(label_smoothed_loss(logits, batch.tgt_out, 0.0, PAD_ID))
            tokens += batch.num_target_tokens
            if self.cfg.eval_bleu:
                decoding = self.config.decoding
                with self.autocast():
                    outputs = greedy_search(
                        self.model,
                        batch.src,
                        max_len_a=decoding.max_len_a,
                        max_len_b=decoding.max_len_b,
                    )
                for index, hypothesis in zip(indices, outputs, strict=True):
                    hypotheses[index] = self.tokenizers.tgt.decode(hypothesis[0].tokens)
        loss = nll_sum / max(tokens, 1)
        result = ValidationResult(loss=loss, perplexity=math.exp(min(loss, 50.0)))
        if self.cfg.eval_bleu:
            order = range(len(self.valid_data))
            hyps = [hypotheses[i] for i in order]
            refs = [self.valid_data.tgt_texts[i] for i in order]
            scores = corpus_scores(hyps, [refs])
            result.bleu, result.chrf = scores.bleu, scores.chrf
            result.samples = [
                (self.valid_data.src_texts[i], refs[i], hyps[i])
                for i in list(order)[: self.cfg.eval_samples]
            ]
        return result

    def record(
        self, result: ValidationResult, train_loss: float, lr: float, elapsed: float
    ) -> None:
        """Log a validation and append it to metrics.jsonl."""
        bleu = "" if result.bleu is None else f" BLEU {result.bleu:.2f} chrF {result.chrf:.2f}"
        logger.info(
            "step %d: valid loss %.3f ppl %.2f%s",
            self.progress.step,
            result.loss,
            result.perplexity,
            bleu,
        )
        for source, reference, hypothesis in result.samples:
            logger.info("  source:     %s", source)
            logger.info("  reference:  %s", reference)
            logger.info("  hypothesis: %s", hypothesis)
        entry = {
            "step": self.progress.step,
            "epoch": self.progress.epoch + 1,
            "elapsed_s": round(elapsed, 2),
            "lr": lr,
            "train_loss": train_loss,
            "valid_loss": result.loss,
            "valid_ppl": result.perplexity,
            "bleu": result.bleu,
            "chrf": result.chrf,
        }
        with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    def evaluate_and_save(self, train_loss: float, lr: float, elapsed: float) -> bool:
        """Validate (rank 0), checkpoint, and say whether early stopping ends training."""
        stop = False
        if self.context.is_main:
            result = self.validate()
            improved = False
            if result is not None:
                self.record(result, train_loss, lr, elapsed)
                best = self.progress.best_metric
                improved = best is None or result.metric() > best
                if improved:
                    self.progress.best_metric = result.metric()
                    self.progress.evals_without_improvement = 0
                else:
                    self.progress.evals_without_improvement += 1
                patience = self.cfg.early_stopping_patience
                if patience and self.progress.evals_without_improvement >= patience:
                    logger.info("early stopping: no improvement in %d validations", patience)
                    stop = True
            self.save(result, improved)
        return self.context.broadcast_flag(stop, self.device)

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
        cfg, progress = self.cfg, self.progress
        self.stop = stop or StopRequest()
        start_time = time.perf_counter() - progress.train_seconds
        bar = tqdm(
            total=cfg.max_steps,
            initial=progress.step,
            disable=None if (cfg.progress_bar and self.context.is_main) else True,
            dynamic_ncols=True,
            unit="step",
        )
        window_loss = torch.zeros((), device=self.device)  # summed on the device: no waiting
        window_tokens, window_start = 0, time.perf_counter()
        last_eval_step = progress.step
        train_loss, lr = math.nan, 0.0
        reason = self.limit_reached()
        while reason is None:
            batches = self.sampler.batches(progress.epoch)
            while progress.next_batch < len(batches):
                group = batches[progress.next_batch : progress.next_batch + cfg.accumulate_steps]
                loss_sum, tokens = self.train_step(group)
                progress.next_batch += len(group)
                progress.train_seconds = time.perf_counter() - start_time
                window_loss += loss_sum
                window_tokens += tokens
                lr = self.optimizer.param_groups[0]["lr"]
                bar.update(1)
                if progress.bad_steps_in_a_row >= cfg.max_bad_steps:
                    reason = DIVERGED
                    break
                log_now = progress.step % cfg.log_every == 0
                if log_now or progress.step % cfg.eval_every == 0 or progress.step % 10 == 0:
                    train_loss = float(window_loss) / max(window_tokens, 1)  # waits for the GPU
                    rate = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                    bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}")
                if log_now:
                    logger.info(
                        "step %d epoch %d: loss %.3f lr %.2e %.0f target tokens/s",
                        progress.step,
                        progress.epoch + 1,
                        train_loss,
                        lr,
                        rate,
                    )
                    window_loss.zero_()
                    window_tokens, window_start = 0, time.perf_counter()
                if progress.step % cfg.eval_every == 0:
                    last_eval_step = progress.step
                    if self.evaluate_and_save(train_loss, lr, progress.train_seconds):
                        reason = (
                            "early stopping: no improvement in "
                            f"{cfg.early_stopping_patience} validations "
                            "(training.early_stopping_patience)"
                        )
                        break
                elif cfg.save_every and progress.step % cfg.save_every == 0:
                    self.save(None)
                if self.stop_requested():
                    reason = f"interrupted by {signal.Signals(self.stop.signum).name}"
                    break
                reason = self.limit_reached()
                if reason is not None:
                    break
            else:
                progress.epoch += 1
                progress.next_batch = 0
                reason = self.limit_reached()
        bar.close()
        self.stop_reason = reason
        if reason == DIVERGED:
            self.log_stop()
            raise self.diverged(
                f"{cfg.max_bad_steps} steps in a row had a non-finite loss or gradient norm "
                f"(training.max_bad_steps; {progress.skipped_steps} skipped in all)"
            )
        if reason.startswith("interrupted"):
            if self.saved_step != progress.step:
                self.save(None)
        elif last_eval_step != progress.step:
            self.evaluate_and_save(train_loss, lr, progress.train_seconds)
        self.log_stop()
        return progress

    def limit_reached(self) -> str | None:
        """Which of max_steps, max_epochs and max_time_minutes is reached, if any."""
        cfg, progress = self.cfg, self.progress
        if progress.step >= cfg.max_steps:
            return f"reached training.max_steps ({cfg.max_steps})"
        if progress.epoch >= cfg.max_epochs:
            return f"reached training.max_epochs ({cfg.max_epochs})"
        if 0 < cfg.max_time_minutes * 60 <= progress.train_seconds:
            return f"reached training.max_time_minutes ({cfg.max_time_minutes:g})"
        return None

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


def link_checkpoint(source: Path, target: Path) -> None:
    """Make `target` name the same file as `source`, atomically (a copy where links fail)."""
    temporary = temporary_path(target)  # a kill leaves it for the next write here to sweep
    try:
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
