"""`transformer-evaluate`: translate a test set and score it with sacreBLEU (BLEU and chrF).

Examples::

    transformer-evaluate --run runs/base --source test.en --reference test.de
    transformer-evaluate --run runs/base --source test.en.gz --reference test.de.gz \\
        --checkpoint averaged --beam-size 5 --output test.hyp.de --json
    transformer-evaluate --hypotheses test.hyp.de --reference test.de      # score only

The scores are sacreBLEU's defaults (13a tokenization, mixed case), printed with their
signatures so that they can be compared with published numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from transformer.cli.common import CommandParser, run_command, setup_logging
from transformer.cli.decoding import (
    add_decoding_flags,
    check_flags,
    decoding_from_args,
    load_translator,
)
from transformer.cli.engine import model_files
from transformer.decoding.scoring import Scores, corpus_scores
from transformer.decoding.translator import read_run_config
from transformer.errors import UserError
from transformer.files import open_output, read_lines, refuse_overwriting

logger = logging.getLogger("transformer.cli.evaluate")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of transformer-evaluate."""
    parser = CommandParser(
        prog="transformer-evaluate",
        allow_abbrev=False,
        description="Translate --source with --run and score it against --reference "
        "(sacreBLEU BLEU and chrF), or score existing --hypotheses.",
    )
    parser.add_argument("--run", type=Path, help="the run directory (to translate --source)")
    parser.add_argument("--source", metavar="FILE", help="source sentences (.gz too)")
    parser.add_argument(
        "--hypotheses", metavar="FILE", help="translations to score instead of translating"
    )
    parser.add_argument(
        "--reference",
        action="append",
        required=True,
        metavar="FILE",
        help="reference translations (.gz too); repeat for several references",
    )
    parser.add_argument("--output", metavar="FILE", help="also write the translations here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_decoding_flags(parser, short_reference=False)  # --reference: the translations
    return parser


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    check_flags(args)
    if args.hypotheses and (args.run or args.source):
        raise UserError("give either --hypotheses, or --run with --source, not both")
    if not args.hypotheses and not (args.run and args.source):
        raise UserError("give --run and --source to translate, or --hypotheses to score")
    inputs = [("--source", args.source), ("--hypotheses", args.hypotheses)]
    inputs += [("--reference", path) for path in args.reference]
    refuse_overwriting(args.output, inputs + (model_files(args) if args.run else []))
    references = [read_lines(path) for path in args.reference]
    if args.hypotheses:
        hypotheses = read_lines(args.hypotheses)
        _check_lengths(args.hypotheses, "hypotheses", len(hypotheses), args.reference, references)
    else:
        source = read_lines(args.source)
        _check_lengths(args.source, "source", len(source), args.reference, references)
        hypotheses = _translate(args, source)
    if not hypotheses:
        raise UserError(f"{args.hypotheses or args.source} is empty; nothing to score")
    scores = corpus_scores(hypotheses, references)
    sys.stdout.write(_report(scores, args.json))
    return 0


def _translate(args: argparse.Namespace, source: list[str]) -> list[str]:
    """Translate the source lines (best hypothesis each); write them to --output if given."""
    decoding = decoding_from_args(read_run_config(args.run).decoding, args, nbest=1)
    translator = load_translator(args)
    logger.info("translating %d sentences from %s", len(source), args.source)
    hypotheses = [nbest[0].text for nbest in translator.translate(source, decoding)]
    if args.output:
        with open_output(args.output) as out:
            out.writelines(f"{line}\n" for line in hypotheses)
        logger.info("wrote the translations to %s", args.output)
    return hypotheses


def _check_lengths(
    name: str, what: str, count: int, reference_paths: list[str], references: list[list[str]]
) -> None:
    for path, lines in zip(reference_paths, references, strict=True):
        if len(lines) != count:
            raise UserError(
                f"{what} file {name} has {count} lines but reference file {path} has "
                f"{len(lines)}; they must be line-aligned"
            )


def _report(scores: Scores, as_json: bool) -> str:
    if as_json:
        return json.dumps(scores.as_dict(), ensure_ascii=False) + "\n"
    return f"{scores.bleu_string}\n{scores.chrf_string}\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point of transformer-evaluate; returns the exit code."""
    return run_command(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
