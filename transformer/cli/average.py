"""`transformer-average`: average the last (or best) N checkpoints of a run into one.

Examples::

    transformer-average --run runs/base --last 5            # -> runs/base/checkpoints/averaged.pt
    transformer-average --run runs/base --best 3 --output avg3.pt
    transformer-average --run runs/base --checkpoints a.pt b.pt c.pt
    transformer-translate --run runs/base --checkpoint averaged --text "Hello"
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from transformer.cli.common import CommandParser, run_command, setup_logging
from transformer.files import refuse_overwriting
from transformer.training.averaging import average_checkpoints, select_best, select_last
from transformer.training.checkpoint import (
    CheckpointError,
    checkpoint_dir,
    save_checkpoint,
    training_files,
)

logger = logging.getLogger("transformer.cli.average")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of transformer-average."""
    parser = CommandParser(
        prog="transformer-average",
        allow_abbrev=False,
        description="Average the parameters of several checkpoints of one run "
        "(the run's checkpoints/step_*.pt files).",
    )
    parser.add_argument("--run", required=True, type=Path, help="the run directory")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--last", type=int, metavar="N", help="the N checkpoints with the top steps")
    which.add_argument(
        "--best", type=int, metavar="N", help="the N checkpoints with the best validation BLEU"
    )
    which.add_argument(
        "--checkpoints", nargs="+", type=Path, metavar="PATH", help="these checkpoint files"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the result (default: RUN/checkpoints/averaged.pt)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if not args.run.is_dir():
        raise CheckpointError(f"run directory {args.run} does not exist")
    if args.checkpoints:
        paths = args.checkpoints
    elif args.best is not None:
        paths = select_best(args.run, args.best)
    else:
        paths = select_last(args.run, args.last)
    output = args.output or checkpoint_dir(args.run) / "averaged.pt"
    inputs = [("the input checkpoint", path) for path in paths]
    refuse_overwriting(output, [*inputs, *training_files(args.run)])
    state = average_checkpoints(paths)
    save_checkpoint(state, output)
    logger.info("wrote %s (the mean of %d checkpoints, step %d)", output, len(paths), state["step"])
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of transformer-average; returns the exit code."""
    return run_command(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
