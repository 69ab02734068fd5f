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

import os
import signal
import sys
import threading
from types import FrameType, TracebackType

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class StartupInterrupt:
    """A Ctrl-C before `run_command` runs: one line `interrupted by SIGINT`, exit status 130.

    Ctrl-C raises KeyboardInterrupt as ever (a program that imports these modules, pytest
    say, sees no difference); what changes is the report when it reaches the top. It is
    remembered too, since an import in C (numpy's) can swallow it, or turn it into an
    ImportError ("cannot load module more than once per process").
    """

    def __init__(self) -> None:
        self.seen = False
        self.installed = False

    def install(self) -> None:
        """Watch SIGINT and report an interrupt at the top, unless others chose otherwise."""
        if threading.current_thread() is not threading.main_thread():  # only it sets handlers
            return
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not `cmd &`
            signal.signal(signal.SIGINT, self.handle)
            self.installed = True
        if sys.excepthook is sys.__excepthook__:  # a hook someone else installed stays
            sys.excepthook = self.excepthook

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The SIGINT handler while the program starts: remember it, then raise as Python does."""
        self.seen = True
        signal.default_int_handler(signum, frame)

    def excepthook(
        self, kind: type[BaseException], error: BaseException, traceback: TracebackType | None
    ) -> None:
        """One line for an interrupt; Python's own report for anything else."""
        interrupted_import = self.seen and issubclass(kind, ImportError)
        if not (issubclass(kind, KeyboardInterrupt) or interrupted_import):
            sys.__excepthook__(kind, error, traceback)
            return
        try:
            sys.stderr.write("interrupted by SIGINT\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # no terminal left to tell
            pass
        if interrupted_import:  # Python would exit with 1: end as Ctrl-C does
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        # Otherwise Python itself ends the process as killed by SIGINT (status 130 in a shell).

    def end(self) -> bool:
        """The program has started: give SIGINT back to Python; whether Ctrl-C came before."""
        main = threading.current_thread() is threading.main_thread()
        if main and self.installed and signal.getsignal(signal.SIGINT) == self.handle:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.installed = False
        seen, self.seen = self.seen, False
        return seen


STARTUP = StartupInterrupt()
STARTUP.install()
