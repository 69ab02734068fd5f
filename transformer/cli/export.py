"""`transformer-export`: a trained run as a CTranslate2 model directory.

Examples::

    transformer-export --run runs/toy --format ctranslate2          # -> runs/toy/ctranslate2
    transformer-export --run runs/toy --format ctranslate2 --output toy-int8 --quantization int8
    transformer-translate --run runs/toy --engine ctranslate2 --export toy-int8 --text "hi"

The export holds CTranslate2's model files, the run's SentencePiece model(s) and export.json
(what was exported); see `transformer/export/directory.py`. It needs the optional ctranslate2
package: pip install 'transformer[ctranslate2]'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformer.cli.common import CommandParser, run_command, setup_logging
from transformer.decoding.translator import read_run_config
from transformer.export.directory import (
    DEFAULT_EXPORT_DIR,
    FORMAT,
    QUANTIZATIONS,
    default_export_dir,
    export_run,
)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of transformer-export."""
    parser = CommandParser(
        prog="transformer-export",
        description="Export a trained run to an inference engine's format (CTranslate2).",
        allow_abbrev=False,
    )
    parser.add_argument("--run", required=True, type=Path, help="the run directory")
    parser.add_argument("--format", required=True, choices=[FORMAT], help="the engine to export to")
    parser.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help=f"the export directory: new, empty, or an earlier export to replace "
        f"(default: RUN/{DEFAULT_EXPORT_DIR}, where --engine ctranslate2 looks)",
    )
    parser.add_argument(
        "--checkpoint",
        default="best",
        help="best, last, averaged, or a checkpoint path (default: best, else last)",
    )
    parser.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default="float32",
        help="the weights' type in the export (default float32; int8 is smaller and faster "
        "on a CPU, with slightly different scores)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    read_run_config(args.run)  # a clear error for a path that is not a run, before the rest
    output = args.output or default_export_dir(args.run)
    record = export_run(args.run, output, args.checkpoint, args.quantization)
    export = "" if args.output is None else f" --export {output}"
    sys.stderr.write(
        f"done: {output} holds {record.checkpoint} ({record.quantization}) for CTranslate2 "
        f"{record.ctranslate2_version}\n"
        f"translate with: transformer-translate --run {args.run} --engine ctranslate2{export} "
        '--text "..."\n'
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of transformer-export; returns the exit code."""
    return run_command(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
