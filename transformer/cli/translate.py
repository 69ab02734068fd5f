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
import itertools
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

from transformer.cli.common import CommandParser, run_command, setup_logging
from transformer.cli.decoding import (
    add_decoding_flags,
    check_flags,
    decoding_from_args,
    load_translator,
)
from transformer.cli.engine import model_files
from transformer.cli.explain import MAX_ATTENTION_LINES, explain_lines
from transformer.config import DecodingConfig
from transformer.decoding.translator import Translation, Translator, read_run_config
from transformer.errors import UserError
from transformer.files import (
    FileError,
    iter_lines,
    open_input,
    open_output,
    os_reason,
    refuse_overwriting,
)

logger = logging.getLogger("transformer.cli.translate")

CHUNK_LINES = 1000


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of transformer-translate."""
    parser = CommandParser(
        prog="transformer-translate",
        allow_abbrev=False,
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
    parser.add_argument(
        "--attention",
        type=Path,
        metavar="DIR",
        help="also write each line's attention (as transformer-explain does: attention.json "
        f"and heatmaps) into DIR/line_0001/, ...; at most {MAX_ATTENTION_LINES} lines",
    )
    add_decoding_flags(parser)
    return parser


# --------------------------------------------------------------------------- output


class NbestWriter:
    """Writes translations as plain lines, `text<TAB>score` lines, or n-best lines."""

    def __init__(self, out: TextIO, nbest: int, scores: bool, name: str) -> None:
        self.out = out
        self.nbest = nbest
        self.scores = scores
        self.name = name  # for error messages: the file, or "standard output"
        self.sentence = 0

    def write(self, translations: list[list[Translation]]) -> None:
        """Write the translations of consecutive input lines and flush."""
        try:
            self._write(translations)
        except BrokenPipeError:
            raise  # the reader has gone: the command ends quietly
        except OSError as error:
            raise FileError(f"cannot write {self.name}: {os_reason(error)}") from None

    def _write(self, translations: list[list[Translation]]) -> None:
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
    check_flags(args)
    if args.text and args.input:
        raise UserError("give either --text or --input, not both")
    reads = [("--input", args.input), *model_files(args)]
    refuse_overwriting(args.output, reads)
    refuse_overwriting(args.attention, reads)
    if args.attention is not None:
        return _main_with_attention(args)
    with contextlib.ExitStack() as stack:
        # Open the files before loading the model, so that a bad path fails at once; the
        # output is a temporary file that replaces --output only when everything succeeded.
        stream: BinaryIO | None = None
        if args.input not in (None, "-"):
            stream, name = stack.enter_context(open_input(args.input)), args.input
        elif not args.text and (args.input == "-" or not sys.stdin.isatty()):
            stream, name = sys.stdin.buffer, "<stdin>"
        decoding = decoding_from_args(read_run_config(args.run).decoding, args, args.nbest)
        out = stack.enter_context(open_output(args.output))
        translator = load_translator(args)
        writer = NbestWriter(out, decoding.nbest, args.scores, args.output or "standard output")
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


def _main_with_attention(args: argparse.Namespace) -> int:
    """--attention DIR: translate a few lines, then write each one's attention into DIR.

    The lines are read whole first (at most MAX_ATTENTION_LINES), so that a long input is
    refused before the model is loaded or anything is written.
    """
    if args.engine != "pytorch":
        raise UserError("--attention needs --engine pytorch: a CTranslate2 export cannot show it")
    if args.attention.exists() and not args.attention.is_dir():
        raise UserError(f"--attention {args.attention} is a file; give a directory")
    if args.text:
        lines, name = list(args.text), "--text"
    elif args.input in (None, "-"):
        lines, name = _at_most(iter_lines(sys.stdin.buffer, "<stdin>")), "standard input"
    else:
        with open_input(args.input) as stream:
            lines, name = _at_most(iter_lines(stream, args.input)), args.input
    if len(lines) > MAX_ATTENTION_LINES:
        raise UserError(
            f"--attention writes a folder per line: {name} has more than {MAX_ATTENTION_LINES} "
            "lines; give fewer (head -n 100 FILE), or translate without --attention"
        )
    decoding = decoding_from_args(read_run_config(args.run).decoding, args, args.nbest)
    with open_output(args.output) as out:
        translator = load_translator(args)
        writer = NbestWriter(out, decoding.nbest, args.scores, args.output or "standard output")
        writer.write(translator.translate(lines, decoding))
    explained = explain_lines(translator, lines, decoding, args.attention)
    logger.info("wrote the attention of %d lines into %s", explained, args.attention)
    return 0


def _at_most(lines: Iterator[str]) -> list[str]:
    """The first MAX_ATTENTION_LINES + 1 lines: enough to tell that there are too many."""
    return list(itertools.islice(lines, MAX_ATTENTION_LINES + 1))


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
    return run_command(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
