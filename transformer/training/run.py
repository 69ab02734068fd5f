"""Setting up a training run: the run directory, tokenizers, encoded data and the model."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from transformer.config import (
    Config,
    ConfigError,
    config_changes,
    config_from_dict,
    config_to_dict,
    load_config,
    load_config_values,
    save_config,
)
from transformer.data.corpus import (
    DataError,
    EncodedCorpus,
    encode_corpus,
    iter_sentences,
    load_corpus,
)
from transformer.data.tokenizer import (
    TokenizerPair,
    load_tokenizers,
    train_tokenizers,
    with_vocabulary_sizes,
)
from transformer.errors import UserError
from transformer.files import StagedDirectory, os_reason
from transformer.model import Transformer
from transformer.model import build_model as build_transformer
from transformer.training.checkpoint import (
    CACHE_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    TOKENIZER_DIR,
    checkpoint_dir,
)
from transformer.training.distributed import DistributedContext
from transformer.training.finetune import Parent, find_parent, inherit_config
from transformer.training.lock import RunLock

logger = logging.getLogger(__name__)

# Settings of model.* and tokenizer.* that a resumed run may change: how training segments
# its text (transformer.data.sampling), not the tokenizer nor the weights.
_FREE_ON_RESUME = ("tokenizer.sampling",)


@dataclass
class PreparedData:
    """The tokenizers and the encoded corpora a run trains and validates on."""

    tokenizers: TokenizerPair
    train: EncodedCorpus
    valid: EncodedCorpus | None


@dataclass
class RunStart:
    """How a training starts: its config and, when it continues a run, the checkpoint."""

    config: Config
    resume_from: Path | None = None  # last.pt; None: from step 0
    reuse_tokenizer: bool = False  # load the run's tokenizer rather than train a new one
    parent: Parent | None = None  # a fine-tuning's parent: its weights (and, new, tokenizer)


def plan_run(
    run_dir: Path,
    config_path: Path | None,
    overrides: list[str],
    resume: bool,
    init_from: Path | None = None,
) -> RunStart:
    """Decide, from the command line and what `run_dir` holds, how to start; writes nothing.

    A new run needs --config and a directory without checkpoints (one with only a config,
    left by a run stopped before its first checkpoint, starts afresh); with `init_from`
    (or the config's training.init_from) it starts from that trained run's weights and
    tokenizer (`transformer.training.finetune`). --resume continues from last.pt with the
    run's config.yaml, or with --config if given; either may be changed by --set, but not in
    model.* or tokenizer.* (see `check_resume_changes`). A fine-tuned run resumes from its
    own last.pt: its parent is not read again.
    """
    if init_from is not None and resume:
        raise UserError(
            "--init-from starts a new run from a trained one, --resume continues a run: give "
            "one of them (a fine-tuned run continues with --resume alone)"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is not a directory")
    config_file = run_dir / CONFIG_FILE
    last = checkpoint_dir(run_dir) / "last.pt"
    has_checkpoints = any(checkpoint_dir(run_dir).glob("*.pt"))
    if not resume:
        if has_checkpoints:
            raise UserError(
                f"run directory {run_dir} already holds a run; continue it with --resume, "
                "or choose another --run-dir"
            )
        if config_path is None:
            raise UserError("give --config FILE to start a new run")
        values = load_config_values(config_path, overrides)
        config = config_from_dict(values, str(config_path))
        parent = None
        if init_from is not None or config.training.init_from is not None:
            parent = find_parent(init_from or Path(str(config.training.init_from)))
            config = inherit_config(parent.config, values, str(config_path))
            training = dataclasses.replace(config.training, init_from=str(parent.checkpoint))
            config = dataclasses.replace(config, training=training)
        if config_file.is_file():
            logger.info(
                "%s holds a config but no checkpoint (a run stopped before its first one): "
                "starting afresh",
                run_dir,
            )
        return RunStart(config, parent=parent)
    if not config_file.is_file():
        raise UserError(
            f"--resume: {run_dir} holds no run to resume (no {CONFIG_FILE}, no "
            f"{CHECKPOINT_DIR}/{last.name}); drop --resume to start one"
        )
    saved = load_config(config_file)
    config = load_config(config_path or config_file, overrides)
    parent = None
    if saved.training.init_from is not None:
        # a fine-tuned run: what --config leaves out of model.* and tokenizer.* is the run's
        source = config_path or config_file
        config = inherit_config(
            saved, load_config_values(source, overrides), str(source), "the run"
        )
        if not last.is_file() and not has_checkpoints:  # stopped before its first checkpoint
            parent = find_parent(Path(saved.training.init_from))
    # training.init_from records how the run began: a resume does not change it
    training = dataclasses.replace(config.training, init_from=saved.training.init_from)
    config = dataclasses.replace(config, training=training)
    check_resume_changes(saved, config, run_dir)
    if last.is_file():
        return RunStart(config, resume_from=last, reuse_tokenizer=True)
    if has_checkpoints:
        raise UserError(
            f"--resume: {run_dir} has checkpoints but no {last.name} to resume from; "
            f"resume from a copy of one of them as {last}, or start a new run"
        )
    logger.info(
        "%s has no checkpoint yet (the run stopped before its first one): starting afresh "
        "from its %s",
        run_dir,
        CONFIG_FILE,
    )
    return RunStart(config, reuse_tokenizer=(run_dir / TOKENIZER_DIR).is_dir(), parent=parent)


def check_resume_changes(saved: Config, config: Config, run_dir: Path) -> None:
    """Refuse changes to model.* and tokenizer.* (but tokenizer.sampling) on resume; log the
    other changes.

    Vocabulary sizes left out (null) in `config` are the run's.
    """
    model = config.model
    if model.src_vocab_size is None and model.tgt_vocab_size is None:
        model = dataclasses.replace(
            model,
            src_vocab_size=saved.model.src_vocab_size,
            tgt_vocab_size=saved.model.tgt_vocab_size,
        )
    changes = config_changes(
        config_to_dict(saved), config_to_dict(dataclasses.replace(config, model=model))
    )
    fixed = [
        change
        for change in changes
        if change.startswith(("model.", "tokenizer.")) and not change.startswith(_FREE_ON_RESUME)
    ]
    if fixed:
        raise UserError(
            f"cannot resume {run_dir} with a changed model or tokenizer ({'; '.join(fixed)}); "
            "they are fixed by its checkpoints: start a new run (another --run-dir) instead"
        )
    if changes:
        logger.info("resuming with changes to %s: %s", run_dir / CONFIG_FILE, "; ".join(changes))


class RunDirectory:
    """A run directory while a training sets it up and uses it.

    Rank 0 holds its lock (`transformer.training.lock`) until the end. Until `commit`, nothing
    of the run is in place: a new tokenizer (`new_tokenizer`) is trained into `staging`, a
    `transformer.files.StagedDirectory` beside tokenizer/; config.yaml and train.log are not
    written. If setting up fails, what was created is removed again.
    """

    def __init__(self, path: Path, context: DistributedContext, new_tokenizer: bool) -> None:
        self.path = path
        self.context = context
        self.new_tokenizer = new_tokenizer
        self.staged: StagedDirectory | None = None  # rank 0's, while a new tokenizer is staged
        self.staging: Path | None = None  # where every rank finds the new tokenizer
        self.lock = RunLock(path)
        self.created: list[Path] = []  # made by this process: the run dir, parents, cache
        self.committed = False

    def __enter__(self) -> RunDirectory:
        if self.context.is_main:
            self.created = [p for p in [self.path, *self.path.parents] if not p.exists()]
            if not (self.path / CACHE_DIR).exists():
                self.created.append(self.path / CACHE_DIR)
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserError(f"cannot create {self.path}: {os_reason(error)}") from None
            try:
                self.lock.acquire()
                if self.new_tokenizer:
                    self.staged = StagedDirectory(self.path / TOKENIZER_DIR)
            except BaseException:
                self.lock.release()
                self._remove_created()
                raise
        if self.new_tokenizer:  # the staged name is rank 0's (its process id): tell the others
            staged = str(self.staged.path) if self.staged is not None else ""
            self.staging = Path(self.context.broadcast_object(staged))
        return self

    def commit(self, config: Config) -> None:
        """Put the run in place: the new tokenizer (if trained) and config.yaml, atomically."""
        if self.context.is_main:
            if self.staged is not None:
                self.staged.commit()
            save_config(config, self.path / CONFIG_FILE)
        self.committed = True

    def __exit__(self, *exc_info: object) -> None:
        if not self.context.is_main:
            return
        self.lock.release()
        if not self.committed:
            if self.staged is not None:
                self.staged.discard()
            self._remove_created()

    def _remove_created(self) -> None:
        """Remove what this process made: the run directory, its parents if empty, the cache."""
        for path in self.created:
            if path in (self.path, self.path / CACHE_DIR):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.rmdir()


def prepare_data(
    config: Config,
    run_dir: Path,
    context: DistributedContext,
    resume: bool,
    tokenizer_dir: Path | None = None,
) -> PreparedData:
    """Load the corpora, train (or, when `resume`, reload) the tokenizers, encode both splits.

    The tokenizers live in `tokenizer_dir` (by default the run's tokenizer/ directory).
    """
    if config.data.train is None:
        raise ConfigError("data.train", "a training corpus is required to train")
    train_raw = load_corpus(config.data.train, "data.train")
    valid_raw = load_corpus(config.data.valid, "data.valid") if config.data.valid else None
    tokenizer_dir = tokenizer_dir or run_dir / TOKENIZER_DIR
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
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else run_dir / CACHE_DIR
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
    try:
        model = with_vocabulary_sizes(model, tokenizers)
    except ConfigError as error:
        raise ConfigError(error.key, f"{error.message}; leave it out (null)") from None
    return dataclasses.replace(config, model=model)


def build_model(config: Config, seed: int, device: torch.device) -> Transformer:
    """The model of `config.model`, initialised from `seed`, on `device`, with the model's
    fast paths unless `training.fast` is false.

    The one place training seeds torch's generator: what the model's initialisation leaves
    of it drives dropout next. Each process of a distributed run passes seed + rank, so that
    they draw different dropout masks (DistributedDataParallel gives them rank 0's weights).
    """
    torch.manual_seed(seed)
    model = build_transformer(config.model, fast=config.training.fast).to(device)
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
