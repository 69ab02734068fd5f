"""Checkpoints and the run directory: atomic writes, weights-only loads, where files live.

A run directory is self-contained; translation needs nothing else::

    RUN/config.yaml              the resolved config (vocabulary sizes filled in)
    RUN/tokenizer/               spm.model (joint) or src.model + tgt.model
    RUN/checkpoints/last.pt      the latest state (model, optimizer, schedule, RNG, data order)
                                 (with training.ema_decay, model holds the averaged weights
                                 and raw_model the trained ones: see training/ema.py)
    RUN/checkpoints/best.pt      the best by validation BLEU
    RUN/checkpoints/step_*.pt    the k best, by validation BLEU
    RUN/metrics.jsonl            one line per validation
    RUN/train.log                the training log
    RUN/train.lock               while a training runs: its process id and host
    RUN/cache/                   the tokenized corpora (unless data.cache_dir says elsewhere)
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, BinaryIO

import torch

from transformer.errors import UserError
from transformer.files import atomic_write

CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
CACHE_DIR = "cache"
LOG_FILE = "train.log"
CHECKPOINT_NAMES = ("best", "last", "averaged")  # --checkpoint NAME: checkpoints/NAME.pt


class CheckpointError(UserError):
    """A checkpoint or run directory that cannot be used."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` (tensors, numbers, strings, lists and dicts only) atomically.

    A failed write (a full disk) is a `FileError` naming `path` and the system's reason.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        writer = _WriteErrors(handle)
        try:
            torch.save(state, writer)
        except RuntimeError:
            # torch's zip writer swallows the OSError of a failed write and goes on to fail
            # on its own ("unexpected pos ..."): raise the error the file gave instead.
            if writer.error is None:
                raise
            raise writer.error from None


class _WriteErrors:
    """A binary file that keeps the last `OSError` its `write` raised."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    instead: str = "use another checkpoint (e.g. --checkpoint last or best)",
) -> dict[str, Any]:
    """Load a checkpoint with `torch.load(weights_only=True)`; unusable files are a UserError.

    `instead` ends the message: what the user of this command can do about it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # Weights-only loading refuses a file that names code to call (`GLOBAL posix.system`):
        # unpickled in full, it could run anything. Nothing of it was run.
        called = re.search(r"GLOBAL (\S+)", str(error))
        if called is None:
            raise CheckpointError(
                f"checkpoint {path} is corrupted or truncated; {instead}"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is not a plain-tensor checkpoint: it asks to run "
            f"{called.group(1).rstrip('.,')}, so it was not loaded; {instead}"
        ) from None
    except Exception:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated; {instead}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} holds no model state; is it one of ours?")
    return state


def checkpoint_dir(run_dir: str | Path) -> Path:
    """Where a run keeps its checkpoints."""
    return Path(run_dir) / CHECKPOINT_DIR


def run_files(run_dir: str | Path) -> list[tuple[str, Path]]:
    """What of a run a command that reads it must never write over, for `refuse_overwriting`:
    config.yaml, and everything in tokenizer/ and checkpoints/."""
    return [*_setup_files(run_dir), ("the run's checkpoints", checkpoint_dir(run_dir))]


def training_files(run_dir: str | Path) -> list[tuple[str, Path]]:
    """What training wrote, for a command that may add checkpoints (transformer-average):
    config.yaml, tokenizer/, and last.pt, best.pt and the step_*.pt files."""
    directory = checkpoint_dir(run_dir)
    trained = [directory / "last.pt", directory / "best.pt", *sorted(directory.glob("step_*.pt"))]
    return [*_setup_files(run_dir), *(("the run's checkpoint", path) for path in trained)]


def _setup_files(run_dir: str | Path) -> list[tuple[str, Path]]:
    run_dir = Path(run_dir)
    return [
        ("the run's config", run_dir / CONFIG_FILE),
        ("the run's tokenizer", run_dir / TOKENIZER_DIR),
    ]


def resolve_checkpoint(run_dir: str | Path, name: str = "best") -> Path:
    """`best`, `last` (or `averaged`) within the run, or a path; falls back from best to last."""
    run_dir = Path(run_dir)
    if name in CHECKPOINT_NAMES:
        path = checkpoint_dir(run_dir) / f"{name}.pt"
        if name == "best" and not path.is_file():
            path = checkpoint_dir(run_dir) / "last.pt"
        if not path.is_file():
            make = "transformer-average" if name == "averaged" else "transformer-train"
            raise CheckpointError(
                f"run directory {run_dir} has no {name} checkpoint in {checkpoint_dir(run_dir)}; "
                f"make one with {make} or pass --checkpoint PATH"
            )
        return path
    path = Path(name)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path
