"""What every command shares: argument parsing, logging setup, and turning errors into exits.

A `UserError` (or an operating-system error no lower layer put into words) becomes one line
`error: ...` on stderr and exit code 2; an interrupt exits with 128 + the signal number.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable

from transformer.errors import UserError
from transformer.files import os_reason

EXIT_USER_ERROR = 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: what a shell reports for a process killed by it


class Interrupted(KeyboardInterrupt):
    """A signal (SIGINT, SIGTERM) that stops the command at once: exit code 128 + its number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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
    # A log line that cannot be written (a full disk under train.log) is dropped, not printed
    # with a traceback: the write that matters (a checkpoint) reports the error itself.
    logging.raiseExceptions = False
    try:  # the datasets library draws its own progress bars while loading files
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass


def run_command(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run `main(argv)`; errors become one `error: ...` line on stderr and an exit code.

    A `UserError` or an `OSError` gives exit code 2, Ctrl-C 130, a closed output pipe
    (e.g. `| head`) a quiet 141, as Unix tools do.
    """
    try:
        code = main(argv)
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except UserError as error:
        return _fail(str(error))
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        return _fail(f"{where}{os_reason(error)}")
    except KeyboardInterrupt as error:
        signum = getattr(error, "signum", signal.SIGINT)
        sys.stderr.write(f"interrupted by {signal.Signals(signum).name}\n")
        return 128 + signum
    try:
        sys.stdout.flush()  # a full disk behind stdout shows here, not as a traceback at exit
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as error:
        return _fail(f"cannot write standard output: {os_reason(error)}")
    return code


def _fail(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    try:
        sys.stdout.flush()
    except OSError:
        _discard_stdout()
    return EXIT_USER_ERROR


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout replaced by something without a descriptor
        pass
