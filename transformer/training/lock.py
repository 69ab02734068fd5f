"""One training per run directory: a lock file that names the process holding it.

The file RUN/train.lock holds "PID HOST". A lock whose process no longer runs on this host
(a training killed with SIGKILL, a machine that rebooted) is stale and is taken over; a live
one, or one held from another host, is an error that names the process.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from transformer.errors import UserError
from transformer.files import os_reason, process_alive

logger = logging.getLogger(__name__)

LOCK_FILE = "train.lock"


class RunLockedError(UserError):
    """Another training holds the run directory."""


class RunLock:
    """The lock of one run directory, held from `acquire` (or `with`) until `release`."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.owner = f"{os.getpid()} {socket.gethostname()}"
        self.held = False

    def acquire(self) -> None:
        """Take the lock (taking over a stale one), or raise `RunLockedError`."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as error:
                raise UserError(f"cannot create {self.path}: {os_reason(error)}") from None
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self.owner + "\n")
            self.held = True
            return
        raise RunLockedError(f"{self.path} was taken by another process meanwhile; try again")

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if self.held and self._read() == self.owner:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return ""
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"cannot read {self.path}: {os_reason(error)}") from None

    def _take_over_if_stale(self) -> None:
        """Remove the lock if its process is gone; else raise `RunLockedError`."""
        holder = self._read()
        if not holder:
            return  # removed since, or being written: the next attempt decides
        pid_text, _, host = holder.partition(" ")
        unknown = not pid_text.isdigit()
        if unknown or host != socket.gethostname() or process_alive(int(pid_text)):
            who = "an unknown process" if unknown else f"process {pid_text} on {host}"
            raise RunLockedError(
                f"{self.path.parent} is in use by {who} (lock file {self.path}); wait for that "
                f"training to end or stop it; if it is not running, delete {self.path}"
            )
        logger.warning(
            "taking over the stale lock %s of process %s, which no longer runs", self.path, pid_text
        )
        self.path.unlink(missing_ok=True)
