"""Validation during training: loss, perplexity, greedy translations scored by sacreBLEU.

Shape legend: B batch, S source length, T target length, V target vocabulary.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from transformer.config import DecodingConfig, TrainingConfig
from transformer.data.batching import Batch, TokenBatchSampler
from transformer.data.corpus import EncodedCorpus
from transformer.data.special_ids import PAD_ID
from transformer.data.tokenizer import TokenizerPair
from transformer.decoding.scoring import corpus_scores
from transformer.decoding.search import greedy_search
from transformer.model import Transformer
from transformer.training.loss import label_smoothed_loss

logger = logging.getLogger(__name__)


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


class Validator:
    """Measures a model on the valid corpus: per-token loss, and BLEU/chrF if training.eval_bleu.

    `autocast` is the training's one mixed-precision context, so that validation computes
    in the precision the model trains in.
    """

    def __init__(
        self,
        model: Transformer,
        data: EncodedCorpus,
        tokenizers: TokenizerPair,
        training: TrainingConfig,
        decoding: DecodingConfig,
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> None:
        self.model = model
        self.data = data
        self.tokenizers = tokenizers
        self.training = training
        self.decoding = decoding
        self.device = device
        self.autocast = autocast

    @torch.inference_mode()
    def validate(self, interrupted: Callable[[], bool]) -> ValidationResult | None:
        """Validate the whole corpus; None when it is empty or `interrupted()` turned true."""
        if len(self.data) == 0:
            return None
        self.model.eval()
        sampler = TokenBatchSampler(
            self.data.src_lengths,
            self.data.tgt_lengths,
            batch_tokens=self.training.batch_tokens,
            seed=0,
            shuffle=False,
        )
        nll_sum, tokens = 0.0, 0
        hypotheses: dict[int, str] = {}  # by corpus index
        for indices in sampler.batches(0):
            if interrupted():  # asked to stop: save without waiting for this
                logger.info("validation cut short: stopping")
                return None
            batch = self.data.collate(indices, PAD_ID, self.model.special_ids.bos)
            batch = batch.to(self.device)
            nll_sum += self.summed_loss(batch)
            tokens += batch.num_target_tokens
            if self.training.eval_bleu:
                hypotheses.update(zip(indices, self.translate(batch), strict=True))
        loss = nll_sum / max(tokens, 1)
        result = ValidationResult(loss=loss, perplexity=math.exp(min(loss, 50.0)))
        if self.training.eval_bleu:
            self.score(result, hypotheses)
        return result

    def summed_loss(self, batch: Batch) -> float:
        """The batch's negative log-likelihood, summed over its target tokens (no smoothing)."""
        with self.autocast():
            logits = self.model(batch.src, batch.tgt_in)  # (B, T, V)
            return float(label_smoothed_loss(logits, batch.tgt_out, 0.0, PAD_ID))

    def translate(self, batch: Batch) -> list[str]:
        """Greedy translations of the batch's sources, as text, in batch order."""
        with self.autocast():
            outputs = greedy_search(
                self.model,
                batch.src,
                max_len_a=self.decoding.max_len_a,
                max_len_b=self.decoding.max_len_b,
            )
        return [self.tokenizers.tgt.decode(hypothesis[0].tokens) for hypothesis in outputs]

    def score(self, result: ValidationResult, hypotheses: dict[int, str]) -> None:
        """Fill in the corpus BLEU and chrF of `hypotheses`, and the first few as samples."""
        order = range(len(self.data))
        hyps = [hypotheses[i] for i in order]
        refs = [self.data.tgt_texts[i] for i in order]
        scores = corpus_scores(hyps, [refs])
        result.bleu, result.chrf = scores.bleu, scores.chrf
        result.samples = [
            (self.data.src_texts[i], refs[i], hyps[i])
            for i in list(order)[: self.training.eval_samples]
        ]


def log_validation(step: int, result: ValidationResult) -> None:
    """The log lines of a validation: its numbers, then each sample's three texts."""
    bleu = "" if result.bleu is None else f" BLEU {result.bleu:.2f} chrF {result.chrf:.2f}"
    logger.info("step %d: valid loss %.3f ppl %.2f%s", step, result.loss, result.perplexity, bleu)
    for source, reference, hypothesis in result.samples:
        logger.info("  source:     %s", source)
        logger.info("  reference:  %s", reference)
        logger.info("  hypothesis: %s", hypothesis)


class MetricsLog:
    """A run's metrics.jsonl: one JSON line appended per validation."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(
        self,
        result: ValidationResult,
        *,
        step: int,
        epoch: int,
        elapsed: float,
        lr: float,
        train_loss: float,
    ) -> None:
        """Append the line of a validation at `step` (of 1-based `epoch`, `elapsed` seconds in)."""
        entry = {
            "step": step,
            "epoch": epoch,
            "elapsed_s": round(elapsed, 2),
            "lr": lr,
            "train_loss": train_loss,
            "valid_loss": result.loss,
            "valid_ppl": result.perplexity,
            "bleu": result.bleu,
            "chrf": result.chrf,
        }
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
