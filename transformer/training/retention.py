"""Checkpoint retention: which step_*.pt files a run keeps, and best.pt.

A run keeps the `keep_best` best validations as step files, best first in `Progress.kept`
(`[[metric, file name], ...]`, higher is better). Every save writes last.pt once; the step
file of a validation that made the k best, and best.pt after an improvement, are hard links
to it; step files that fell out of the k best are deleted.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformer.files import temporary_path


@dataclass(frozen=True)
class RetentionPlan:
    """What one save does to the step files: the new ranking, the file to add, those to delete."""

    kept: list[list[Any]]  # [[metric, file name], ...], best first: the new `Progress.kept`
    added: str | None = None  # the step file to link to last.pt (None: not among the k best)
    deleted: list[str] = field(default_factory=list)  # step files that fell out of the k best


class CheckpointRetention:
    """Keeps the `keep_best` best step files of a run's checkpoint directory (none when 0)."""

    def __init__(self, directory: Path, keep_best: int) -> None:
        self.directory = Path(directory)
        self.keep_best = keep_best

    def plan(self, kept: list[list[Any]], step: int, metric: float) -> RetentionPlan:
        """Rank a validation of `step` scoring `metric` among `kept` (no file is touched).

        The sort is stable, so of equal metrics the earlier validation ranks first and the
        new one is the first to go. With keep_best 0 the step files are left as they are.
        """
        if self.keep_best <= 0:
            return RetentionPlan(kept=kept)
        name = step_file_name(step)
        ranked = sorted([*kept, [metric, name]], key=lambda entry: -entry[0])
        kept, dropped = ranked[: self.keep_best], ranked[self.keep_best :]
        added = name if any(entry[1] == name for entry in kept) else None
        return RetentionPlan(kept=kept, added=added, deleted=[entry[1] for entry in dropped])

    def apply(self, last: Path, plan: RetentionPlan | None, improved: bool) -> None:
        """After last.pt is written: link its new step file, delete the dropped, link best.pt."""
        if plan is not None:
            if plan.added:
                link_checkpoint(last, self.directory / plan.added)
            for name in plan.deleted:
                (self.directory / name).unlink(missing_ok=True)
        if improved:
            link_checkpoint(last, self.directory / "best.pt")


def step_file_name(step: int) -> str:
    """The file name of the checkpoint kept for a validation at `step`."""
    return f"step_{step:08d}.pt"


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
