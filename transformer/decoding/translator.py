"""Raw text in, raw text out: a trained run directory's model, tokenizers and search together.

Sentences are sorted by length into token-budget batches (little padding, so fast), decoded
with greedy search (beam_size 1) or beam search, detokenized, and returned in input order.
With `workers` > 1 that many batches are decoded at once, each in its own thread.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from transformer.config import Config, ConfigError, DecodingConfig, ModelConfig, load_config
from transformer.data.batching import pad, token_batches
from transformer.data.tokenizer import EOS_ID, TokenizerPair, load_tokenizers, with_vocabulary_sizes
from transformer.decoding.search import Hypothesis, search
from transformer.model import Transformer, build_model
from transformer.runtime.device import decoding_dtype, resolve_device
from transformer.training.checkpoint import (
    CONFIG_FILE,
    TOKENIZER_DIR,
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Translation:
    """One hypothesis: detokenized text, its model score, and its target token ids."""

    text: str
    score: float
    tokens: tuple[int, ...] = ()


EMPTY_TRANSLATION = Translation(text="", score=0.0)


class Translator:
    """A trained model and its tokenizers, ready to translate lines of raw text.

    `workers` batches are decoded at once, each in a thread of its own. On a CPU, where a
    decoding step is many small operations that keep several threads of one batch from
    being busy, two batches at once with half the threads each decode faster (the caller
    sets the thread count: torch.set_num_threads).
    """

    def __init__(
        self,
        model: Transformer,
        tokenizers: TokenizerPair,
        config: Config,
        device: torch.device,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1 (got {workers})")
        self.model = model.to(device).eval()
        self.tokenizers = tokenizers
        self.config = config
        self.device = device
        self.workers = workers

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        checkpoint: str = "best",
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
        workers: int = 1,
        fast: bool = True,
    ) -> Translator:
        """Load a run's config, tokenizers and checkpoint ("best", "last", "averaged" or a path).

        `dtype` torch.bfloat16 halves the weights and, on CPUs with bfloat16 instructions,
        speeds decoding up (beam search by about half); the scores change slightly. On a CPU
        without them it would be slower, so float32 is used instead (with a warning).
        `fast=False` decodes with the paper's model as written, without the fast paths of
        `transformer.model.fast` (the same translations, slower).
        """
        run_dir = Path(run_dir)
        config = read_run_config(run_dir)
        tokenizer_dir = run_dir / TOKENIZER_DIR
        if not tokenizer_dir.is_dir():
            raise CheckpointError(
                f"run directory {run_dir} has no {TOKENIZER_DIR}/ directory; "
                "it is incomplete (was training interrupted before the tokenizer was saved?)"
            )
        tokenizers = load_tokenizers(tokenizer_dir)
        config_path = run_dir / CONFIG_FILE
        config = replace(config, model=_model_config_for(config, tokenizers, config_path))
        device = resolve_device(device) if isinstance(device, str) else device
        path = resolve_checkpoint(run_dir, checkpoint)
        state = load_checkpoint(path)
        model = build_model(config.model, fast)
        try:
            model.load_state_dict(state["model"])
        except (RuntimeError, TypeError, AttributeError) as error:
            raise CheckpointError(
                f"checkpoint {path} does not fit the model in {config_path} "
                f"({_first_detail(error)})"
            ) from None
        model.to(decoding_dtype(dtype, device))
        logger.info("loaded %s (step %s) on %s", path, state.get("step", "?"), device)
        return cls(model, tokenizers, config, device, workers)

    @property
    def max_source_tokens(self) -> int:
        """The longest source the model takes, in tokens, without the EOS it appends."""
        return self.config.model.max_positions - 1

    def translate(
        self,
        lines: Sequence[str],
        decoding: DecodingConfig | None = None,
        first_line: int = 1,
    ) -> list[list[Translation]]:
        """Translate each line; returns its n-best translations, best first, in input order.

        An empty (or blank) line gives one empty translation. Lines longer than the model's
        positions are truncated with a warning naming the line (`first_line` numbers them).
        """
        decoding = decoding or self.config.decoding
        results = [[EMPTY_TRANSLATION] for _ in lines]
        indices = [i for i, line in enumerate(lines) if line.strip()]
        encoded = self.tokenizers.src.encode_batch([lines[i] for i in indices])
        sources = [
            (i, self._with_eos(ids, first_line + i))
            for i, ids in zip(indices, encoded, strict=True)
            if ids
        ]
        cuts = token_batches([len(ids) for _, ids in sources], decoding.batch_tokens)
        batches = [[sources[j] for j in batch] for batch in reversed(cuts)]  # longest first
        srcs = [
            torch.from_numpy(pad([ids for _, ids in batch])).to(self.device) for batch in batches
        ]
        for batch, hypotheses in zip(batches, self._search_all(srcs, decoding), strict=True):
            for (i, _), nbest in zip(batch, hypotheses, strict=True):
                results[i] = [self.translation(h) for h in nbest]
        return results

    def translation(self, hypothesis: Hypothesis) -> Translation:
        """A search's hypothesis as text, with its score and token ids."""
        return Translation(
            text=self.tokenizers.tgt.decode(list(hypothesis.tokens)),
            score=float(hypothesis.score),
            tokens=tuple(int(t) for t in hypothesis.tokens),
        )

    def source_ids(self, line: str, line_number: int = 1) -> list[int]:
        """The ids the encoder reads for `line`: its pieces (cut to the model's limit, with a
        warning naming the line), then EOS; empty for a line without pieces."""
        ids = self.tokenizers.src.encode(line)
        return self._with_eos(ids, line_number) if ids else []

    def _with_eos(self, ids: list[int], line_number: int) -> list[int]:
        """`ids` cut to `max_source_tokens` (with a warning), then EOS."""
        if len(ids) > self.max_source_tokens:
            logger.warning(
                "line %d: %d tokens, more than the model's limit of %d; "
                "translating only the first %d",
                line_number,
                len(ids),
                self.max_source_tokens,
                self.max_source_tokens,
            )
            ids = ids[: self.max_source_tokens]
        return [*ids, EOS_ID]

    def _search_all(
        self, srcs: list[Tensor], decoding: DecodingConfig
    ) -> list[list[list[Hypothesis]]]:
        """Search each batch of source ids, `workers` batches at a time; results in order."""
        if self.workers == 1 or len(srcs) == 1:
            return [self._search(src, decoding) for src in srcs]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(lambda src: self._search(src, decoding), srcs))

    def _search(self, src: Tensor, decoding: DecodingConfig) -> list[list[Hypothesis]]:
        """Greedy search when beam_size is 1, else beam search, over source ids (B, S)."""
        return search(self.model, src, decoding)


def read_run_config(run_dir: str | Path) -> Config:
    """The resolved config a run directory keeps, with clear errors for what is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(
            f"run directory {run_dir} does not exist; pass the directory transformer-train wrote"
        )
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(
            f"{run_dir} is not a run directory (it has no {CONFIG_FILE}); "
            "pass the directory transformer-train wrote"
        )
    return load_config(config_path)


def _model_config_for(config: Config, tokenizers: TokenizerPair, config_path: Path) -> ModelConfig:
    """The run's ModelConfig, vocabulary sizes checked against (or taken from) its tokenizers."""
    try:
        return with_vocabulary_sizes(config.model, tokenizers)
    except ConfigError as error:
        raise CheckpointError(
            f"{config_path}: {error.key} {error.message}; the tokenizer/ directory does not "
            "belong to this run"
        ) from None


def _first_detail(error: Exception) -> str:
    """The first specific line of a load_state_dict error (e.g. "size mismatch for ...")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    details = [line for line in lines if not line.startswith("Error(s) in loading")]
    detail = (details or lines or [type(error).__name__])[0]
    return detail if len(detail) <= 300 else detail[:297] + "..."
