"""`transformer-translate`: translate text with a trained run directory.

Examples::

    transformer-translate --run runs/toy --text "how are you"
    transformer-translate --run runs/toy --input test.en.gz --output test.hyp.de --beam-size 5
    cat test.en | transformer-translate --run runs/toy > test.hyp.de
    transformer-translate --run runs/toy            # on a terminal: an interactive prompt

Output has one line per input line, in input order (an empty line gives an empty line).
With --scores each line is `translation<TAB>score`. With --nbest N > 1 each input gives
N lines in the Moses / fairseq n-best format `i ||| translation ||| score`, where i is the
0-based number of the input line (an empty input line gives one line with an empty
translation). Scores are the model's log-probabilities, length-normalised by beam search.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import logging
import os
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

import torch

from transformer.cli.common import run_command, setup_logging
from transformer.cli.engine import add_engine_flags, ctranslate2_translator, uses_ctranslate2
from transformer.config import ConfigError, DecodingConfig
from transformer.device import resolve_device
from transformer.errors import UserError
from transformer.translator import Translation, Translator, read_run_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

logger = logging.getLogger("transformer.cli.translate")

CHUNK_LINES = 1000
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a process killed by it
_BLOCK_BYTES = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"
_FLAGS = {
    "beam_size": "--beam-size",
    "nbest": "--nbest",
    "length_penalty": "--length-penalty",
    "batch_tokens": "--max-tokens",
}


class InputError(UserError):
    """An input or output file that cannot be used as text."""


# --------------------------------------------------------------------------- reading text


def open_input(path: str | Path) -> BinaryIO:
    """Open a text file for reading bytes, decompressed if gzip; binary files are refused."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input file {path} does not exist")
    if path.is_dir():
        raise InputError(f"input {path} is a directory; give a text file, one sentence per line")
    try:
        handle: BinaryIO = path.open("rb")
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from None
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
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise InputError(f"cannot read {path}: {reason}") from None
    except InputError:
        handle.close()
        raise
    return handle


def iter_lines(stream: BinaryIO, name: str) -> Iterator[str]:
    """Lines of UTF-8 text without their line ends; bad bytes are replaced, with a warning.

    A stream whose first block holds NUL bytes (binary data, UTF-16) is an `InputError`.
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
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise InputError(f"cannot read {name} after line {number}: {reason}") from None


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
        raise InputError(
            f"{name} is not a UTF-8 text file (it contains NUL bytes: binary data or UTF-16); "
            "give plain text, one sentence per line"
        )


def read_lines(path: str | Path) -> list[str]:
    """All lines of a text file (or of stdin for "-"), see `iter_lines`."""
    if str(path) == "-":
        return list(iter_lines(sys.stdin.buffer, "<stdin>"))
    with open_input(path) as stream:
        return list(iter_lines(stream, str(path)))


@contextlib.contextmanager
def open_output(path: str | Path | None) -> Iterator[TextIO]:
    """stdout for None or "-", else the file (gzip-compressed when it ends in .gz)."""
    if path is None or str(path) == "-":
        yield sys.stdout
        return
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        handle = opener(path, "wt", encoding="utf-8", newline="\n")
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror or error}") from None
    with handle:
        yield handle


# --------------------------------------------------------------------------- options


def positive_flags(args: argparse.Namespace) -> None:
    """Reject impossible decoding flags before anything slow is loaded."""
    checks = [
        ("--beam-size", args.beam_size, 1),
        ("--max-tokens", args.max_tokens, 1),
        ("--length-penalty", args.length_penalty, 0),
        ("--workers", args.workers, 1),
    ]
    for flag, value, low in checks:
        if value is not None and value < low:
            raise UserError(f"{flag} must be >= {low} (got {value})")


def decoding_from_args(
    base: DecodingConfig, args: argparse.Namespace, nbest: int | None = None
) -> DecodingConfig:
    """The run's decoding settings with the command-line flags (and `nbest`) applied."""
    changes = {
        "beam_size": args.beam_size,
        "nbest": nbest,
        "length_penalty": args.length_penalty,
        "batch_tokens": args.max_tokens,
    }
    try:
        return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})
    except ConfigError as error:
        flag = _FLAGS.get(error.key, f"decoding.{error.key}")
        hint = "; raise --beam-size" if error.key == "nbest" else ""
        raise UserError(f"{flag}: {error.message}{hint}") from None


def add_decoding_flags(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --beam-size, --length-penalty, --max-tokens, --device, --verbose."""
    parser.add_argument(
        "--checkpoint",
        default="best",
        help="best, last, averaged, or a checkpoint path (default: best, else last)",
    )
    parser.add_argument(
        "--beam-size", type=int, metavar="N", help="beam width; 1 = greedy (default: from config)"
    )
    parser.add_argument(
        "--length-penalty",
        type=float,
        metavar="A",
        help="GNMT length penalty exponent alpha (default: from config)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="source tokens per batch, padding included (default: decoding.batch_tokens)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="weights for decoding: bfloat16 is faster on GPUs and recent CPUs (default float32)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="batches decoded at once, each in its own thread with 1/N of the CPU threads "
        "(default: 2 on a CPU with 2 or more threads, else 1)",
    )
    add_engine_flags(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def load_translator(args: argparse.Namespace) -> Translator:
    """The run's Translator as --checkpoint, --device, --dtype and --workers say.

    With several workers on a CPU, the process's threads are shared out among them.
    """
    device = resolve_device(args.device)
    on_cpu = device.type == "cpu"
    workers = args.workers or (2 if on_cpu and torch.get_num_threads() >= 2 else 1)
    if workers > 1 and on_cpu:
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))
    if uses_ctranslate2(args):  # --engine ctranslate2: transformer/cli/engine.py
        return ctranslate2_translator(args, device, workers)
    return Translator.from_run(args.run, args.checkpoint, device, DTYPES[args.dtype], workers)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of transformer-translate."""
    parser = argparse.ArgumentParser(
        prog="transformer-translate",
        description="Translate text with a trained run directory. Reads --text, --input, "
        "or stdin (an interactive prompt on a terminal); writes one line per input line.",
        epilog="With --nbest N > 1 each input line gives N lines 'i ||| translation ||| score' "
        "(i counts input lines from 0).",
    )
    parser.add_argument("--run", required=True, type=Path, help="the run directory")
    parser.add_argument(
        "--text", action="append", metavar="TEXT", help="a sentence to translate (repeatable)"
    )
    parser.add_argument(
        "--input", metavar="FILE", help="a text file (.gz too), one sentence per line; - = stdin"
    )
    parser.add_argument("--output", metavar="FILE", help="where to write (default: stdout)")
    parser.add_argument("--nbest", type=int, metavar="N", help="hypotheses per input line")
    parser.add_argument(
        "--scores", action="store_true", help="append each translation's score after a tab"
    )
    add_decoding_flags(parser)
    return parser


# --------------------------------------------------------------------------- output


class NbestWriter:
    """Writes translations as plain lines, `text<TAB>score` lines, or n-best lines."""

    def __init__(self, out: TextIO, nbest: int, scores: bool) -> None:
        self.out = out
        self.nbest = nbest
        self.scores = scores
        self.sentence = 0

    def write(self, translations: list[list[Translation]]) -> None:
        """Write the translations of consecutive input lines and flush."""
        for hypotheses in translations:
            if self.nbest > 1:
                for h in hypotheses:
                    self.out.write(f"{self.sentence} ||| {_one_line(h.text)} ||| {h.score:.4f}\n")
            elif self.scores:
                best = hypotheses[0]
                self.out.write(f"{_one_line(best.text)}\t{best.score:.4f}\n")
            else:
                self.out.write(f"{_one_line(hypotheses[0].text)}\n")
            self.sentence += 1
        self.out.flush()


def _one_line(text: str) -> str:
    """Keep the one-line-per-input promise even if a piece decodes to a line break."""
    return text.replace("\r", " ").replace("\n", " ")


def _chunks(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --------------------------------------------------------------------------- main


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    positive_flags(args)
    if args.nbest is not None and args.nbest < 1:
        raise UserError(f"--nbest must be >= 1 (got {args.nbest})")
    if args.text and args.input:
        raise UserError("give either --text or --input, not both")
    if _same_file(args.input, args.output):
        raise UserError(f"--output {args.output} is the --input file; write elsewhere")
    with contextlib.ExitStack() as stack:
        # Open the files before loading the model, so that a bad path fails at once.
        stream: BinaryIO | None = None
        if args.input not in (None, "-"):
            stream, name = stack.enter_context(open_input(args.input)), args.input
        elif not args.text and (args.input == "-" or not sys.stdin.isatty()):
            stream, name = sys.stdin.buffer, "<stdin>"
        decoding = decoding_from_args(read_run_config(args.run).decoding, args, args.nbest)
        out = stack.enter_context(open_output(args.output))
        translator = load_translator(args)
        writer = NbestWriter(out, decoding.nbest, args.scores)
        if args.text:
            writer.write(translator.translate(args.text, decoding))
        elif stream is None:
            _interactive(translator, decoding, writer)
        else:
            first = 1
            for chunk in _chunks(iter_lines(stream, name), CHUNK_LINES):
                writer.write(translator.translate(chunk, decoding, first_line=first))
                first += len(chunk)
    return 0


def _same_file(first: str | None, second: str | None) -> bool:
    """Whether two file arguments (None or "-" meaning a standard stream) name one file."""
    if first in (None, "-") or second in (None, "-"):
        return False
    return Path(first).resolve() == Path(second).resolve()


def _interactive(translator: Translator, decoding: DecodingConfig, writer: NbestWriter) -> None:
    """A prompt on stderr; each line is translated as soon as it is entered, until EOF."""
    number = 0
    while True:
        sys.stderr.write("> ")
        sys.stderr.flush()
        raw = sys.stdin.buffer.readline()
        if not raw:
            sys.stderr.write("\n")
            return
        number += 1
        line = raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
        writer.write(translator.translate([line], decoding, first_line=number))


def main(argv: list[str] | None = None) -> int:
    """Entry point of transformer-translate; returns the exit code."""
    try:
        return run_command(_main, argv)
    except BrokenPipeError:
        # The reader stopped early (e.g. `| head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    raise SystemExit(main())
