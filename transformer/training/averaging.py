"""Checkpoint averaging: the mean of the parameters of the last (or best) N checkpoints.

Averaging the final checkpoints of a run (the paper averages the last 5 or 20) smooths
the noise of the last updates and usually gains a little BLEU for free.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from transformer.training.checkpoint import CheckpointError, checkpoint_dir, load_checkpoint

logger = logging.getLogger(__name__)

STEP_PATTERN = "step_*.pt"
_STEP_NUMBER = re.compile(r"step_(\d+)\.pt$")


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Average the floating-point parameters of checkpoints of one architecture.

    Returns a checkpoint with "model" (the mean, each tensor in its original dtype; integer
    buffers are taken from the last checkpoint), "config" and "step" of the checkpoint with
    the highest step, and "averaged_from" (the paths). Tensors that share storage (tied
    embeddings) share it in the result too.
    """
    if not paths:
        raise CheckpointError("no checkpoints to average")
    paths = [Path(p) for p in paths]
    sums: dict[str, Tensor] = {}
    reference: dict[str, Tensor] = {}
    latest: dict[str, Any] = {}
    for index, path in enumerate(paths):
        state = load_checkpoint(path)
        model = state["model"]
        if index == 0:
            reference = model
            sums = {key: _accumulator(value) for key, value in model.items()}
        else:
            _check_same_architecture(paths[0], reference, path, model)
            for key, value in model.items():
                if value.is_floating_point():
                    sums[key] += value.to(sums[key].dtype)
                else:
                    sums[key] = value.clone()
        if not latest or int(state.get("step", 0)) >= int(latest.get("step", 0)):
            latest = {"config": state.get("config"), "step": int(state.get("step", 0))}
        del state, model
    averaged = {
        key: (total / len(paths)).to(reference[key].dtype) if total.is_floating_point() else total
        for key, total in sums.items()
    }
    _retie(reference, averaged)
    logger.info("averaged %d checkpoints: %s", len(paths), ", ".join(p.name for p in paths))
    return {
        "model": averaged,
        "config": latest["config"],
        "step": latest["step"],
        "averaged_from": [str(p) for p in paths],
    }


def _accumulator(value: Tensor) -> Tensor:
    """A float64 running sum for floating-point tensors; other tensors are kept as they are."""
    return value.to(torch.float64) if value.is_floating_point() else value.clone()


def _check_same_architecture(
    first_path: Path, first: dict[str, Tensor], path: Path, model: dict[str, Tensor]
) -> None:
    """Same parameter names and shapes, or a CheckpointError naming both files."""
    missing = sorted(set(first) - set(model))
    extra = sorted(set(model) - set(first))
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has the extra parameter {extra[0]}"
        raise CheckpointError(
            f"cannot average {first_path} and {path}: different architectures ({path} {what})"
        )
    for key, value in first.items():
        if value.shape != model[key].shape:
            raise CheckpointError(
                f"cannot average {first_path} and {path}: {key} has shape "
                f"{tuple(value.shape)} in one and {tuple(model[key].shape)} in the other"
            )


def _retie(reference: dict[str, Tensor], averaged: dict[str, Tensor]) -> None:
    """Make keys whose tensors shared storage in `reference` the same tensor in `averaged`."""
    owner: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
    for key, value in reference.items():
        if value.numel() == 0:
            continue
        identity = (value.data_ptr(), value.storage_offset(), tuple(value.shape), value.stride())
        if identity in owner:
            averaged[key] = averaged[owner[identity]]
        else:
            owner[identity] = key


def step_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's `step_*.pt` checkpoints, oldest first (by the step number in the name)."""
    directory = checkpoint_dir(run_dir)
    found = []
    for path in directory.glob(STEP_PATTERN):
        match = _STEP_NUMBER.search(path.name)
        step = int(match.group(1)) if match else int(load_checkpoint(path).get("step", -1))
        found.append((step, path.name, path))
    return [path for _, _, path in sorted(found)]


def select_last(run_dir: str | Path, count: int) -> list[Path]:
    """The `count` step checkpoints with the highest steps, oldest first."""
    paths = step_checkpoints(run_dir)
    _check_enough(run_dir, paths, count)
    return paths[-count:]


def select_best(run_dir: str | Path, count: int) -> list[Path]:
    """The `count` step checkpoints with the highest validation BLEU stored in them."""
    paths = step_checkpoints(run_dir)
    scored = []
    for path in paths:
        bleu = _stored_bleu(load_checkpoint(path))
        if bleu is not None:
            scored.append((bleu, path))
    if not scored and paths:
        raise CheckpointError(
            f"no checkpoint in {checkpoint_dir(run_dir)} stores a validation BLEU "
            '("metrics": {"bleu": ...}); use --last N instead'
        )
    _check_enough(run_dir, [p for _, p in scored], count)
    scored.sort(key=lambda item: item[0], reverse=True)
    best = {path for _, path in scored[:count]}
    return [path for path in paths if path in best]


def _stored_bleu(state: dict[str, Any]) -> float | None:
    metrics = state.get("metrics")
    if isinstance(metrics, dict) and isinstance(metrics.get("bleu"), (int, float)):
        return float(metrics["bleu"])
    return None


def _check_enough(run_dir: str | Path, paths: list[Path], count: int) -> None:
    if count < 1:
        raise CheckpointError(f"the number of checkpoints to average must be >= 1 (got {count})")
    if len(paths) < count:
        raise CheckpointError(
            f"asked to average {count} checkpoints, but {checkpoint_dir(run_dir)} has "
            f"{len(paths)} usable {STEP_PATTERN} file(s); ask for at most {len(paths)}"
            if paths
            else f"asked to average {count} checkpoints, but {checkpoint_dir(run_dir)} has "
            f"no {STEP_PATTERN} files; train longer or keep more checkpoints"
        )
