"""The user's files: text input, atomic output, and telling whether two paths are one file.

Every file the programs write (translations, checkpoints, configs, tokenizers, caches) goes
through `atomic_write`: a temporary file beside the target, renamed over it only when the
work has succeeded, so a failure or a kill leaves the old file as it was. Operating-system
errors become a `FileError` that names the path and the reason. A directory (an export, a
run's tokenizer) is written the same way, by `StagedDirectory` and `atomic_directory`.

Temporary names say whose they are, `.NAME.transformer-PID-HOST-RANDOM.tmp`: one that a
`kill -9` left behind is removed by the next write into its directory, once its process is
gone; nothing else is ever removed. Before writing, `refuse_overwriting` refuses an output
that is a file the command reads or must keep (the same path, a symlink or a hard link).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TextIO, TypeVar

from transformer.errors import UserError

logger = logging.getLogger(__name__)

_BLOCK_BYTES = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"
STANDARD_STREAM = "-"
_OURS = "transformer"  # the mark in our temporary names
TEMPORARY_NAME = re.compile(  # our temporaries: what `sweep_temporaries` may remove
    rf"^\.(?P<name>.+)\.{_OURS}-(?P<pid>\d+)-(?P<host>[0-9a-f]{{8}})-[0-9a-z_]+\.tmp"
    r"(?P<old>\.old)?$"
)

Written = TypeVar("Written")


class FileError(UserError):
    """A file that cannot be read or written; the message names it and the reason."""


def os_reason(error: BaseException) -> str:
    """The operating system's words for an error ("No space left on device"), else its text."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


# --------------------------------------------------------------------------- reading text


def open_input(path: str | Path) -> BinaryIO:
    """Open a text file for reading bytes, decompressed if gzip; binary files are refused."""
    path = Path(path)
    if not path.exists():
        raise FileError(f"input file {path} does not exist")
    if path.is_dir():
        raise FileError(f"input {path} is a directory; give a text file, one sentence per line")
    try:
        handle: BinaryIO = path.open("rb")
    except OSError as error:
        raise FileError(f"cannot read {path}: {os_reason(error)}") from None
    try:
        if handle.read(2) == _GZIP_MAGIC:
            handle.seek(0)
            handle = gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[assignment]
        else:
            handle.seek(0)
        _check_text(handle.read(_BLOCK_BYTES), str(path))
        handle.seek(0)
    except (OSError, EOFError, zlib.error) as error:
        handle.close()
        raise FileError(f"cannot read {path}: {os_reason(error)}") from None
    except FileError:
        handle.close()
        raise
    return handle


def iter_lines(stream: BinaryIO, name: str) -> Iterator[str]:
    """Lines of UTF-8 text without their line ends; bad bytes are replaced, with a warning.

    A stream whose first block holds NUL bytes (binary data, UTF-16) is a `FileError`.
    """
    number = 0
    try:
        for raw in _raw_lines(stream, name):
            number += 1
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                text = raw.decode("utf-8", errors="replace")
                logger.warning(
                    "%s line %d: invalid UTF-8 (byte %d); undecodable bytes replaced by U+FFFD",
                    name,
                    number,
                    error.start + 1,
                )
            if number == 1:
                text = text.removeprefix("\ufeff")
            yield text
    except (OSError, EOFError, zlib.error) as error:
        raise FileError(f"cannot read {name} after line {number}: {os_reason(error)}") from None


def _raw_lines(stream: BinaryIO, name: str) -> Iterator[bytes]:
    """Split a byte stream at b"\\n" as data arrives (read1, so pipes are not waited on)."""
    read = getattr(stream, "read1", stream.read)
    pending = bytearray()
    first = True
    while block := read(_BLOCK_BYTES):
        if first:
            _check_text(block, name)
            first = False
        start = 0
        while (end := block.find(b"\n", start)) != -1:
            pending += block[start:end]
            yield bytes(pending)
            pending.clear()
            start = end + 1
        pending += block[start:]
    if pending:
        yield bytes(pending)


def _check_text(head: bytes, name: str) -> None:
    if b"\x00" in head:
        raise FileError(
            f"{name} is not a UTF-8 text file (it contains NUL bytes: binary data or UTF-16); "
            "give plain text, one sentence per line"
        )


def read_lines(path: str | Path) -> list[str]:
    """All lines of a text file (or of stdin for "-"), see `iter_lines`."""
    if str(path) == STANDARD_STREAM:
        return list(iter_lines(sys.stdin.buffer, "<stdin>"))
    with open_input(path) as stream:
        return list(iter_lines(stream, str(path)))


# --------------------------------------------------------------------------- one file or two


def same_file(first: str | Path | None, second: str | Path | None) -> bool:
    """Whether two paths name one existing file: the same path, a symlink to it, a hard link.

    Compared by device and inode (`os.stat` follows symlinks). None and "-" (standard
    streams) are no file.
    """
    if first is None or second is None or STANDARD_STREAM in (str(first), str(second)):
        return False
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist (yet)
        return False


def refuse_overwriting(
    output: str | Path | None, keep: Iterable[tuple[str, str | Path | None]]
) -> None:
    """A `FileError` if writing `output` would replace something in `keep`, (what, path) pairs.

    A file in `keep` is refused as the output by any name (a symlink or a hard link to it);
    a directory in `keep` refuses every path inside it, and every file elsewhere that is a
    link to one of its files. None and "-" (standard streams) are no file.
    """
    if output is None or str(output) == STANDARD_STREAM:
        return
    resolved = Path(os.path.realpath(output))
    for what, path in keep:
        if path is None or str(path) == STANDARD_STREAM:
            continue
        kept = Path(os.path.realpath(path))
        if not kept.is_dir():
            if resolved == kept or same_file(resolved, kept):
                _refuse(output, resolved, f"is the same file as {what} {path}")
            continue
        if resolved.is_relative_to(kept):
            _refuse(output, resolved, f"is inside {what} {path}")
        if resolved.is_file():
            for file in kept.rglob("*"):
                if same_file(resolved, file):
                    _refuse(output, resolved, f"is the same file as {file} ({what})")


def _refuse(output: str | Path, resolved: Path, what: str) -> None:
    link = "" if Path(output).absolute() == resolved else f" (a link to {resolved})"
    raise FileError(
        f"the output {output}{link} {what}; writing it would destroy what the command reads "
        "or keeps: write the output elsewhere"
    )


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` only when the `with` block succeeds.

    The data goes to a temporary file in the target's directory, is flushed to disk, and is
    renamed over the target (through a symlink: the file it points to is replaced, the link
    kept). On any failure the temporary file is removed and the target is left as it was.
    A target that is not a regular file (/dev/null, /dev/full, a pipe) is written in place.
    Operating-system errors on this file become a `FileError` naming `path`.
    """
    target = Path(os.path.realpath(path))
    temporary = None
    in_body = False  # an error the caller's block raises about another file keeps its own name
    try:
        mode = _existing_mode(target)
        if mode is not None and not stat.S_ISREG(mode):
            with open(target, "wb") as handle:
                in_body = True
                yield handle
                in_body = False
            return
        sweep_temporaries(target.parent)
        fd, temporary = tempfile.mkstemp(
            prefix=_temporary_prefix(target.name), suffix=".tmp", dir=target.parent
        )
        os.fchmod(fd, stat.S_IMODE(mode) if mode is not None else _new_file_mode())
        with os.fdopen(fd, "wb") as handle:
            in_body = True
            yield handle
            in_body = False
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException as error:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        if isinstance(error, OSError) and (not in_body or error.filename in (None, temporary)):
            raise FileError(f"cannot write {path}: {os_reason(error)}") from None
        raise
    _fsync_directory(target.parent)


@contextlib.contextmanager
def open_output(path: str | Path | None) -> Iterator[TextIO]:
    """stdout for None or "-", else an `atomic_write` text file (gzip when it ends in .gz)."""
    if path is None or str(path) == STANDARD_STREAM:
        yield sys.stdout
        return
    with atomic_write(path) as raw:
        layer: BinaryIO = (
            gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0)  # type: ignore[assignment]
            if Path(path).suffix == ".gz"
            else raw
        )
        text = io.TextIOWrapper(layer, encoding="utf-8", newline="\n")  # type: ignore[arg-type]
        yield text
        try:
            text.flush()
            text.detach()
            if layer is not raw:
                layer.close()  # writes the gzip trailer; leaves `raw` open
        except OSError as error:
            raise FileError(f"cannot write {path}: {os_reason(error)}") from None


class StagedDirectory:
    """A directory written under a temporary name beside `output`, made `output` by `commit`.

    The one mechanism by which a directory is replaced: an export (`atomic_directory`, in one
    call) and a run's tokenizer (`transformer.training.run.RunDirectory`, whose tokenizer is
    trained, then checked with the data and the model, then put in place with the run's
    config). Until `commit`, `output` is as it was; `discard` (or leaving a `with` block
    without committing) removes the staged directory. Its name is a temporary name of ours
    (`temporary_path`): one that a kill left behind is removed by the next write beside it,
    and an `output` moved aside by a kill in the middle of `commit` is put back.
    """

    def __init__(self, output: str | Path) -> None:
        self.output = Path(output)
        self.committed = False
        try:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            sweep_temporaries(self.output.parent)
            self.path = temporary_path(self.output)
            self.path.mkdir()  # not mkdtemp: the directory gets the permissions the umask gives
        except OSError as error:
            raise FileError(f"cannot write {self.output}: {os_reason(error)}") from None

    def commit(self) -> None:
        """Make the staged directory `output`: an existing `output` (which the caller has
        checked may go) is moved aside, then deleted once the new one is in place; on a
        failure it is put back and the staged directory removed (a `FileError`)."""
        # A kill while `output` is aside: the next sweep puts it back (the `.old` name).
        old = self.path.with_name(self.path.name + ".old")
        try:
            if self.output.exists():
                os.replace(self.output, old)
            try:
                os.replace(self.path, self.output)
            except BaseException:
                if old.exists():
                    os.replace(old, self.output)
                raise
        except OSError as error:
            self.discard()
            raise FileError(f"cannot write {self.output}: {os_reason(error)}") from None
        self.committed = True
        shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        """Remove the staged directory (nothing, once committed)."""
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> StagedDirectory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()


def atomic_directory(output: str | Path, write: Callable[[Path], Written]) -> Written:
    """Call `write(directory)` on a new `StagedDirectory` beside `output`, then make it
    `output` and return what `write` returned.

    On any failure the staged directory is removed and `output` is left as it was.
    Operating-system errors become a `FileError`.
    """
    with StagedDirectory(output) as staged:
        try:
            written = write(staged.path)
        except OSError as error:
            raise FileError(f"cannot write {output}: {os_reason(error)}") from None
        staged.commit()
    return written


# --------------------------------------------------------------------------- temporaries


def temporary_path(target: Path) -> Path:
    """A new name beside `target` for writing it, of the pattern `sweep_temporaries` knows."""
    return target.with_name(_temporary_prefix(target.name) + os.urandom(4).hex() + ".tmp")


def _temporary_prefix(name: str) -> str:
    """`.NAME.transformer-PID-HOST-`: whose a temporary file is, for `sweep_temporaries`."""
    return f".{name}.{_OURS}-{os.getpid()}-{_host_tag()}-"


def _host_tag() -> str:
    """This machine, in 8 hex digits: a process id means something only on its own host."""
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # it runs, as another user; no such process id
        return True  # either way: not known to be gone
    return True


def sweep_temporaries(directory: str | Path) -> None:
    """Remove the temporaries of ours in `directory` that a killed process left behind.

    Only names of our pattern, made on this host by a process that no longer runs, are
    touched; a directory moved aside (`.old`) whose replacement never arrived is put back.
    Whatever cannot be removed stays: this never fails the write that called it.
    """
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    host = _host_tag()
    for entry in entries:
        match = TEMPORARY_NAME.match(entry.name)
        if match is None or match["host"] != host or process_alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        target = path.with_name(match["name"])
        try:
            if match["old"] and not os.path.lexists(target):
                os.replace(path, target)
                logger.warning("put back %s, left aside by process %s", target, match["pid"])
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        logger.info("removed %s, left behind by process %s", path, match["pid"])


def _existing_mode(path: Path) -> int | None:
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        return None


def _new_file_mode() -> int:
    """What `open()` would give a new file: 0o666 less the process's umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (where directories can be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
