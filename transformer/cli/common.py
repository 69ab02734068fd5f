"""What every command shares: argument parsing, logging setup, and turning errors into exits.

A `UserError`, a bad argument (or an operating-system error no lower layer put into words)
becomes one line `error: ...` on stderr and exit code 2; an interrupt (Ctrl-C, SIGTERM, or
SIGHUP when the terminal closes) exits with 128 + the signal number, after the `with` blocks
on its way out removed what they had half written.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn

from transformer.cli import STARTUP
from transformer.errors import UserError
from transformer.files import os_reason

EXIT_USER_ERROR = 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: what a shell reports for a process killed by it
# Signals that end a command as Ctrl-C does (SIGINT raises KeyboardInterrupt by itself):
# `kill`, a service manager stopping it, the terminal closing.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A signal (SIGINT, SIGTERM, SIGHUP) that stops the command at once: exit 128 + its number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose errors are one `error: ...` line and exit code 2, as all errors.

    argparse's own error repeats the whole usage before the message; the line points to
    `--help` instead.
    """

    def error(self, message: str) -> NoReturn:
        """Print `error: MESSAGE (see PROG --help)` and exit with code 2."""
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


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

    A `UserError` or an `OSError` gives exit code 2, Ctrl-C 130, SIGTERM 143, SIGHUP 129,
    a closed output pipe (e.g. `| head`) a quiet 141, as Unix tools do.
    """
    STARTUP.end()  # from here on, Ctrl-C is a KeyboardInterrupt that the command handles
    try:
        with _stop_signals_interrupt():
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
        return _interrupted(getattr(error, "signum", signal.SIGINT))
    try:
        sys.stdout.flush()  # a full disk behind stdout shows here, not as a traceback at exit
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as error:
        return _fail(f"cannot write standard output: {os_reason(error)}")
    return code


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `Interrupted`, as Ctrl-C raises KeyboardInterrupt.

    Their default action ends the process on the spot: no `finally` runs, so a temporary
    output file stays behind and nothing says why the command stopped. A signal ignored on
    purpose (`nohup` ignores SIGHUP) stays ignored. Commands with their own way to stop
    (training, the server) install their handlers over these for a while.
    """
    if threading.current_thread() is not threading.main_thread():  # only it may set handlers
        yield
        return
    previous = {}
    for number in STOP_SIGNALS:
        if signal.getsignal(number) is signal.SIG_DFL:
            previous[number] = signal.signal(number, _raise_interrupted)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def tell(text: str) -> None:
    """Write `text` for the user on stderr; a terminal that is gone (closed) loses it quietly.

    After SIGHUP the terminal answers every write with an error: the message has no reader,
    and the exit code must stay the one that says what happened.
    """
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except OSError:
        _discard(sys.stderr)
    except ValueError:  # stderr closed by the program
        pass


def _interrupted(signum: int) -> int:
    tell(f"interrupted by {signal.Signals(signum).name}\n")
    return 128 + signum


def _fail(message: str) -> int:
    tell(f"error: {message}\n")
    try:
        sys.stdout.flush()
    except OSError:
        _discard_stdout()
    return EXIT_USER_ERROR


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the flush at exit cannot fail again."""
    _discard(sys.stdout)


def _discard(stream: object) -> None:
    """Point `stream`'s descriptor at /dev/null, so that the flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())  # type: ignore[attr-defined]
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # replaced by something without a descriptor
        pass
