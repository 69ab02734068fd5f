"""Command-line programs: the only place that touches argv, stdout, stderr and exit codes.

Every program imports this package before it imports torch: the one moment at which the
way torch's OpenMP threads wait for work can still be chosen (the runtime reads it once,
when torch loads it). Unless OMP_WAIT_POLICY is set, it is PASSIVE: a thread waiting for
the others sleeps instead of spinning. On a CPU another program keeps busy, the spinning
takes the very cores the other threads need (docs/training.md: "Threads on a shared machine").
The library itself (`import transformer.model`) sets nothing.

It is also the first moment a Ctrl-C can be answered. A program spends its first seconds
importing torch, before `run_command` catches KeyboardInterrupt; Python would print the
traceback of whichever import the Ctrl-C stopped (`STARTUP` prints one line instead).
"""

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def is_a_command() -> bool:
    """Whether this process is one of the command-line programs: a `transformer-*` script,
    or `python -m transformer.cli.NAME` (or `python -m transformer`)."""
    if Path(sys.argv[0]).name.startswith("transformer-"):
        return True
    argv = getattr(sys, "orig_argv", [])
    return any(
        flag == "-m" and (module == "transformer" or module.startswith("transformer.cli"))
        for flag, module in zip(argv, argv[1:], strict=False)
    )


class StartupInterrupt:
    """A Ctrl-C before `run_command` runs: one line `interrupted by SIGINT`, and the process
    ends at once, as killed by SIGINT (exit status 130 in a shell).

    While a command imports its libraries it has written nothing, so there is nothing to
    save or to clean up, and ending the process from the signal handler is the safe answer.
    Raising KeyboardInterrupt there is not: a Ctrl-C that lands while torch's C++ code calls
    back into Python becomes `terminate called after throwing an instance of
    'pybind11::error_already_set'` and an abort, and one in numpy's import an ImportError.
    Only a command's own process is watched: a program that imports these modules (pytest,
    a notebook) keeps Python's Ctrl-C.
    """

    def __init__(self) -> None:
        self.installed = False

    def install(self) -> None:
        """Answer SIGINT so in a command's process, unless others chose otherwise."""
        if threading.current_thread() is not threading.main_thread():  # only it sets handlers
            return
        if is_a_command() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self.handle)  # not where SIGINT is ignored (`cmd &`)
            self.installed = True

    @staticmethod
    def handle(signum: int, frame: FrameType | None) -> None:
        """Say so in one line and end as killed by SIGINT, as an interrupted program does."""
        with contextlib.suppress(OSError):  # no terminal left to tell
            os.write(2, b"interrupted by SIGINT\n")
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)

    def end(self) -> None:
        """The program has started: give SIGINT back to Python (KeyboardInterrupt)."""
        main = threading.current_thread() is threading.main_thread()
        if main and self.installed and signal.getsignal(signal.SIGINT) == self.handle:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        self.installed = False


STARTUP = StartupInterrupt()
STARTUP.install()
