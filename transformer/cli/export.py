"""`transformer-export`: a trained run as a CTranslate2 model directory or a MarianMT folder.

Examples::

    transformer-export --run runs/toy --format ctranslate2          # -> runs/toy/ctranslate2
    transformer-export --run runs/toy --format ctranslate2 --output toy-int8 --quantization int8
    transformer-translate --run runs/toy --engine ctranslate2 --export toy-int8 --text "hi"
    transformer-export --run runs/toy --format hf --output toy-hf     # a MarianMT folder

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
from transformer.export.huggingface_export import FORMAT as HF_FORMAT
from transformer.export.huggingface_export import export_huggingface


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of transformer-export."""
    parser = CommandParser(
        prog="transformer-export",
        description="Export a trained run to CTranslate2 or to a Hugging Face MarianMT folder.",
        allow_abbrev=False,
    )
    parser.add_argument("--run", required=True, type=Path, help="the run directory")
    parser.add_argument(
        "--format",
        required=True,
        choices=[FORMAT, HF_FORMAT],
        help="ctranslate2 (an inference engine) or hf (a Hugging Face MarianMT folder)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help=f"the export directory: new, empty, or an earlier export to replace "
        f"(default: RUN/{DEFAULT_EXPORT_DIR}, where --engine ctranslate2 looks; with "
        f"--format {HF_FORMAT}: RUN/{HF_FORMAT})",
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
    if args.format == HF_FORMAT:
        if args.quantization != "float32":
            parser_error = f"--quantization {args.quantization} applies to ctranslate2 only"
            sys.stderr.write(f"error: {parser_error}\n")
            return 2
        output = args.output or args.run / HF_FORMAT
        checkpoint = export_huggingface(args.run, output, args.checkpoint)
        sys.stderr.write(
            f"done: {output} holds {checkpoint} as a Hugging Face MarianMT model\n"
            f"load with: MarianMTModel.from_pretrained({str(output)!r}), "
            f"MarianTokenizer.from_pretrained({str(output)!r})\n"
        )
        return 0
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
