"""`transformer-import`: a model trained elsewhere as a run directory.

Example::

    transformer-import --from hf opus-mt-en-de/ --run-dir runs/opus-en-de
    transformer-translate --run runs/opus-en-de --text "How are you?"

`--from hf` reads a Hugging Face MarianMT folder (OPUS-MT), as `save_pretrained` writes it;
see `transformer/export/huggingface.py` for what maps to what and what is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformer.cli.common import CommandParser, run_command, setup_logging
from transformer.export.huggingface import import_marian


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of transformer-import."""
    parser = CommandParser(
        prog="transformer-import",
        description="Import a trained model (a Hugging Face MarianMT folder) as a run directory.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--from", dest="source", required=True, choices=["hf"], help="the format to import"
    )
    parser.add_argument("folder", type=Path, help="the model folder (config.json, weights, ...)")
    parser.add_argument(
        "--run-dir", required=True, type=Path, help="the run directory to write (new or empty)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    model = import_marian(args.folder, args.run_dir)
    sys.stderr.write(
        f"done: {args.run_dir} holds {args.folder} ({model.num_encoder_layers}+"
        f"{model.num_decoder_layers} layers, d_model {model.d_model}, "
        f"{model.src_vocab_size} pieces)\n"
        f'translate with: transformer-translate --run {args.run_dir} --text "..."\n'
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of transformer-import; returns the exit code."""
    return run_command(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
