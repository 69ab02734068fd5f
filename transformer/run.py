"""Setting up a training run: the run directory, tokenizers, encoded data and the model."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from transformer.checkpoint import CHECKPOINT_DIR, CONFIG_FILE, TOKENIZER_DIR, checkpoint_dir
from transformer.config import Config, ConfigError, save_config
from transformer.data import DataError, EncodedCorpus, encode_corpus, iter_sentences, load_corpus
from transformer.distributed import DistributedContext
from transformer.errors import UserError
from transformer.model import Transformer
from transformer.tokenizer import PAD_ID, TokenizerPair, load_tokenizers, train_tokenizers

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """The tokenizers and the encoded corpora a run trains and validates on."""

    tokenizers: TokenizerPair
    train: EncodedCorpus
    valid: EncodedCorpus | None


def check_run_directory(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a run, and refuse to resume one that is not there."""
    holds_run = (run_dir / CONFIG_FILE).exists() or (run_dir / CHECKPOINT_DIR).exists()
    if resume:
        if not (checkpoint_dir(run_dir) / "last.pt").is_file():
            raise UserError(
                f"--resume: {run_dir} has no checkpoints/last.pt to resume from; "
                "drop --resume to start a new run"
            )
    elif holds_run:
        raise UserError(
            f"run directory {run_dir} already holds a run; continue it with --resume, "
            "or choose another --run-dir"
        )


def prepare_data(
    config: Config, run_dir: Path, context: DistributedContext, resume: bool
) -> PreparedData:
    """Load the corpora, train (or reload) the tokenizers, and encode both splits."""
    if config.data.train is None:
        raise ConfigError("data.train", "a training corpus is required to train")
    train_raw = load_corpus(config.data.train, "data.train")
    valid_raw = load_corpus(config.data.valid, "data.valid") if config.data.valid else None
    tokenizer_dir = run_dir / TOKENIZER_DIR
    if not resume:
        if context.is_main:
            tokenizer_dir.mkdir(parents=True, exist_ok=True)
            train_tokenizers(
                config.tokenizer,
                iter_sentences(train_raw, "src"),
                iter_sentences(train_raw, "tgt"),
                tokenizer_dir,
            )
        context.barrier()
    tokenizers = load_tokenizers(tokenizer_dir)
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else run_dir / "cache"
    if context.enabled and not context.is_main:
        context.barrier()  # rank 0 encodes first; the others then read its cache
    train = encode_corpus(
        train_raw,
        tokenizers,
        config.data.max_length,
        config.data.max_length_ratio,
        cache_dir,
        filter=True,
    )
    if context.enabled and context.is_main:
        context.barrier()
    if len(train) == 0:
        raise DataError(
            "data.train: no sentence pairs left after filtering (data.max_length="
            f"{config.data.max_length}, data.max_length_ratio={config.data.max_length_ratio}); "
            "check the files or relax the filter"
        )
    valid = None
    if valid_raw is not None:
        valid = encode_corpus(
            valid_raw,
            tokenizers,
            config.data.max_length,
            config.data.max_length_ratio,
            cache_dir,
            filter=False,
        )
    logger.info(
        "data: %d training pairs, %s validation pairs; vocabulary %d (source) / %d (target)%s",
        len(train),
        len(valid) if valid is not None else "no",
        tokenizers.src.vocab_size,
        tokenizers.tgt.vocab_size,
        " shared" if tokenizers.joint else "",
    )
    return PreparedData(tokenizers, train, valid)


def resolve_model_config(config: Config, tokenizers: TokenizerPair) -> Config:
    """The config with the model's vocabulary sizes taken from the tokenizers."""
    model = config.model
    if model.share_embeddings and not tokenizers.joint:
        raise ConfigError(
            "model.share_embeddings",
            "needs a joint tokenizer (tokenizer.joint: true); set one of them the other way",
        )
    for name, size in (
        ("src_vocab_size", tokenizers.src.vocab_size),
        ("tgt_vocab_size", tokenizers.tgt.vocab_size),
    ):
        given = getattr(model, name)
        if given is not None and given != size:
            raise ConfigError(
                f"model.{name}",
                f"is {given} but the tokenizer has {size} pieces; leave it out (null)",
            )
    model = dataclasses.replace(
        model,
        src_vocab_size=tokenizers.src.vocab_size,
        tgt_vocab_size=tokenizers.tgt.vocab_size,
        pad_id=PAD_ID,
    )
    return dataclasses.replace(config, model=model)


def build_model(config: Config, seed: int, device: torch.device) -> Transformer:
    """The model of `config.model`, initialised from `seed`, on `device`."""
    torch.manual_seed(seed)
    model = Transformer(config.model).to(device)
    logger.info(
        "model: %.2fM parameters (d_model %d, %d+%d layers, %d heads, d_ff %d)",
        model.num_parameters() / 1e6,
        config.model.d_model,
        config.model.num_encoder_layers,
        config.model.num_decoder_layers,
        config.model.num_heads,
        config.model.d_ff,
    )
    return model


def write_config(config: Config, run_dir: Path, context: DistributedContext) -> None:
    """Save the resolved config into the run directory (rank 0 only)."""
    if context.is_main:
        save_config(config, run_dir / CONFIG_FILE)
