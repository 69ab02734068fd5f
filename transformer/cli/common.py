"""What every command shares: logging setup and turning user errors into one-line exits."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from transformer.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever `sys.stderr` is when a record arrives."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class assigns it; we always look it up
        pass


def add_override_flag(parser: argparse.ArgumentParser) -> None:
    """`--set KEY=VALUE ...` (repeatable), collected into `args.overrides`."""
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. --set training.lr=5e-4 model.d_model=256",
    )


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr: INFO (or DEBUG) for our package, warnings for everything else."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("transformer").setLevel(logging.DEBUG if verbose else logging.INFO)
    try:  # the datasets library draws its own progress bars while loading files
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass


def run_command(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run `main(argv)`; a `UserError` becomes `error: ...` on stderr and exit code 2."""
    try:
        return main(argv)
    except UserError as error:
        sys.stderr.write(f"error: {error}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
