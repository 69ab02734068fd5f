"""Starting a run from a trained one (`transformer-train --init-from`): fine-tuning.

The new run takes its parent's weights, tokenizer and vocabulary, and so its model.* and
tokenizer.* settings; optimizer, schedule, step and data order start afresh. Dropout is no
part of the model's shape: a fine-tuning config may change model.dropout and
model.attention_dropout. The parent is only read: not its files, not its lock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor

from transformer.config import Config, ConfigError, config_from_dict, config_to_dict, load_config
from transformer.errors import UserError
from transformer.files import os_reason
from transformer.model import Transformer
from transformer.training.checkpoint import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    TOKENIZER_DIR,
    CheckpointError,
    checkpoint_dir,
    load_checkpoint,
)

logger = logging.getLogger(__name__)

# model.* keys a fine-tuning config may change: they shape no weight.
FREE_MODEL_KEYS = ("dropout", "attention_dropout")
# tokenizer.* keys it may change: they change how training segments text, not the tokenizer.
FREE_TOKENIZER_KEYS = ("sampling",)
# Null vocabulary sizes mean "the tokenizer's": no change to a parent's sizes.
_NULL_MEANS_INHERITED = ("model.src_vocab_size", "model.tgt_vocab_size")


@dataclasses.dataclass
class Parent:
    """The run and checkpoint a fine-tuning starts from, and the weights it holds."""

    run_dir: Path
    checkpoint: Path  # resolved
    config: Config  # the parent run's resolved config
    weights: dict[str, Tensor]  # the checkpoint's model state; emptied once put in the model


def find_parent(given: Path) -> Parent:
    """The run and checkpoint `--init-from` names: a run directory (its best checkpoint, else
    its last) or a checkpoint file in a run's checkpoints/ folder; a UserError otherwise.

    The checkpoint is read at once (before the data is prepared), so that a damaged one is
    refused in a moment; its path, step and sha256 are logged (and so kept in train.log).
    """
    if not given.exists():
        raise UserError(f"--init-from {given} does not exist; give a run directory or checkpoint")
    if given.is_dir():
        run_dir = given
        if not (run_dir / CONFIG_FILE).is_file():
            raise UserError(
                f"--init-from {given} is not a run directory (no {CONFIG_FILE}); give the "
                "directory of a transformer-train run or one of its checkpoints"
            )
        best, last = checkpoint_dir(run_dir) / "best.pt", checkpoint_dir(run_dir) / "last.pt"
        checkpoint = best if best.is_file() else last
        if not checkpoint.is_file():
            raise UserError(
                f"--init-from {given} has no checkpoint ({CHECKPOINT_DIR}/best.pt or "
                "last.pt); train it first (transformer-train --resume), or give a checkpoint file"
            )
    else:
        checkpoint, run_dir = given, given.parent.parent
        if given.parent.name != CHECKPOINT_DIR or not (run_dir / CONFIG_FILE).is_file():
            raise UserError(
                f"--init-from {given}: a checkpoint must lie in a run's {CHECKPOINT_DIR}/ "
                f"folder, beside the run's {CONFIG_FILE} and {TOKENIZER_DIR}/ (whose "
                "tokenizer the new run takes)"
            )
    if not (run_dir / TOKENIZER_DIR).is_dir():
        raise UserError(f"--init-from: run {run_dir} has no {TOKENIZER_DIR}/ to take")
    config = load_config(run_dir / CONFIG_FILE)
    checkpoint = checkpoint.resolve()
    instead = "give --init-from another checkpoint of the run (e.g. RUN/checkpoints/last.pt)"
    state = load_checkpoint(checkpoint, map_location="cpu", instead=instead)
    logger.info(
        "initialised from %s (step %s, %s)", checkpoint, state.get("step"), fingerprint(checkpoint)
    )
    return Parent(run_dir, checkpoint, config, state["model"])


def inherit_config(
    parent: Config, values: dict[str, Any], source: str, parent_name: str = "parent"
) -> Config:
    """The config of `values` (a user's YAML and --set) with model.* and tokenizer.* taken
    from `parent`; a key `values` gives with another value than the parent's is refused."""
    config = config_from_dict(values, source)  # the user's mistakes first, with their names
    mine = config_to_dict(config)
    theirs = config_to_dict(parent)
    changes = []
    for section in ("model", "tokenizer"):
        given = values.get(section) or {}
        for key in sorted(given):
            dotted = f"{section}.{key}"
            free = FREE_MODEL_KEYS if section == "model" else FREE_TOKENIZER_KEYS
            if key in free:
                theirs[section][key] = mine[section][key]
            elif dotted in _NULL_MEANS_INHERITED and given[key] is None:
                continue
            elif mine[section].get(key) != theirs[section].get(key):
                changes.append(
                    f"{dotted}: {theirs[section].get(key)} ({parent_name}) -> "
                    f"{mine[section].get(key)} (config)"
                )
    if changes:
        raise UserError(
            f"{source}: {'; '.join(changes)}; a fine-tuned run keeps its parent's model and "
            "tokenizer: remove these keys"
        )
    mine["model"], mine["tokenizer"] = theirs["model"], theirs["tokenizer"]
    try:
        return config_from_dict(mine, source)
    except ConfigError as error:  # the parent's settings with this config's dropout
        raise error.located(source=source) from None


def copy_tokenizer(parent_run: Path, destination: Path) -> None:
    """Copy the parent's tokenizer files (byte for byte) into `destination`."""
    source = parent_run / TOKENIZER_DIR
    try:
        destination.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.iterdir()):
            if path.is_file():
                shutil.copyfile(path, destination / path.name)
    except OSError as error:
        raise UserError(f"cannot copy the tokenizer of {parent_run}: {os_reason(error)}") from None


def load_parent_weights(model: Transformer, parent: Parent) -> None:
    """Put the parent's weights into `model` (and let go of the parent's copy)."""
    try:
        model.load_state_dict(parent.weights)
    except (RuntimeError, TypeError) as error:
        reason = str(error).splitlines()[0][:200]
        raise CheckpointError(
            f"checkpoint {parent.checkpoint} does not fit the model of its run "
            f"{parent.run_dir} ({reason}); give --init-from another checkpoint"
        ) from None
    parent.weights = {}


def fingerprint(path: Path) -> str:
    """`sha256 HEX, N bytes` of a file: which parent checkpoint this was, for the log."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        size = path.stat().st_size
    except OSError as error:
        raise UserError(f"cannot read {path}: {os_reason(error)}") from None
    return f"sha256 {digest.hexdigest()}, {size} bytes"
