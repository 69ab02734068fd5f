"""`transformer-explain`: follow one sentence through a trained model, and draw its attention.

Examples::

    transformer-explain --run runs/toy --text "how are you"
    transformer-explain --run runs/toy --text "how are you" --beam-size 1 --output how/

Prints the sentence's path through the model, stage by stage, with this sentence's shapes;
writes `attention.json` (the pieces and every attention weight, nested [layer][head][query]
[key]) and PNG heatmaps (with the `plot` extra) into --output (default
RUN/explain/<slug of the text>-<hash of the text>/: one folder per distinct text).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from transformer.cli.common import CommandParser, run_command, setup_logging
from transformer.cli.decoding import (
    DTYPES,
    add_reference_flag,
    check_flags,
    decoding_from_args,
    load_translator,
)
from transformer.config import DecodingConfig
from transformer.decoding.translator import Translator, read_run_config
from transformer.errors import UserError
from transformer.explain.plots import (
    LABELLED_UP_TO,
    MissingExtraError,
    has_piece_labels,
    write_attention_figures,
)
from transformer.explain.trace import Explanation, Stage, explain, folder_name
from transformer.files import FileError, atomic_write, os_reason, refuse_overwriting
from transformer.training.checkpoint import run_files

logger = logging.getLogger("transformer.cli.explain")

EXPLAIN_DIR = "explain"
JSON_FILE = "attention.json"
_NAME_WIDTH = 62


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of transformer-explain."""
    parser = CommandParser(
        prog="transformer-explain",
        description="Follow a sentence through a trained model: every stage with its shapes, "
        "every attention as JSON and as heatmaps.",
        allow_abbrev=False,
    )
    parser.add_argument("--run", required=True, type=Path, help="the run directory")
    parser.add_argument("--text", required=True, help="the sentence to translate and explain")
    parser.add_argument(
        "--output", type=Path, help=f"where to write (default: RUN/{EXPLAIN_DIR}/<text>-<hash>/)"
    )
    parser.add_argument(
        "--checkpoint", default="best", help="best, last, averaged, or a path (default: best)"
    )
    parser.add_argument(
        "--beam-size", type=int, metavar="N", help="1 = greedy (default: from the run's config)"
    )
    parser.add_argument("--length-penalty", type=float, metavar="A", help="GNMT alpha")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    add_reference_flag(parser)
    parser.add_argument("--quiet", action="store_true", help="write the files, print no trace")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # One sentence, one worker, the model's own code (its attention is what is drawn).
    parser.set_defaults(workers=1, engine="pytorch", export=None)
    return parser


def format_trace(explanation: Explanation) -> str:
    """The trace as aligned lines: stage, shape, note."""
    lines = [
        f"{explanation.source!r} -> {explanation.translation!r} (score {explanation.score:.4f})",
        "",
    ]
    for stage in explanation.stages:
        lines.append(_format_stage(stage))
    return "\n".join(lines) + "\n"


def _format_stage(stage: Stage) -> str:
    name = "  " * stage.depth + stage.name
    if stage.shape is None and not stage.note:
        return name
    shape = "" if stage.shape is None else str(stage.shape)
    return f"{name:<{_NAME_WIDTH}} {shape:<18} {stage.note}".rstrip()


def write_explanation(explanation: Explanation, directory: Path) -> list[Path]:
    """attention.json, then the PNGs when matplotlib is there; returns the paths written."""
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--output {directory} is a file; give a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FileError(f"cannot create {directory}: {os_reason(error)}") from None
    data = json.dumps(explanation.to_json(), ensure_ascii=False).encode("utf-8")
    with atomic_write(directory / JSON_FILE) as handle:
        handle.write(data)
    written = [directory / JSON_FILE]
    try:
        written += write_attention_figures(explanation, directory)
    except MissingExtraError as error:
        sys.stderr.write(f"note: no PNG heatmaps: {error}\n")
    except OSError as error:
        raise UserError(f"cannot write the heatmaps into {directory}: {error.strerror}") from None
    source, inputs = explanation.source_pieces, explanation.decoder_input_pieces
    if len(written) > 1 and not has_piece_labels(source, inputs):
        longest = max(len(source), len(inputs))
        sys.stderr.write(
            f"note: {directory}: a heatmap of more than {LABELLED_UP_TO} pieces a side shows "
            f"positions, not the pieces (here up to {longest}: their names would overlap); "
            f"{JSON_FILE} has every piece and weight\n"
        )
    return written


MAX_ATTENTION_LINES = 100  # transformer-translate --attention: one folder of files per line


def explain_lines(
    translator: Translator, lines: list[str], decoding: DecodingConfig, directory: Path
) -> int:
    """`transformer-translate --attention DIR`: each non-empty line's attention.json and
    heatmaps into DIR/line_0001/, DIR/line_0002/, ... (numbered as the input lines);
    returns how many lines were explained."""
    explained = 0
    for number, line in enumerate(lines, start=1):
        if line.strip():
            explanation = explain(translator, line, dataclasses.replace(decoding, nbest=1))
            write_explanation(explanation, directory / f"line_{number:04d}")
            explained += 1
    return explained


def _refuse_another_texts_folder(directory: Path, text: str) -> None:
    """A folder holding the explanation of another text is not replaced (the same text's is)."""
    previous = directory / JSON_FILE
    if not previous.exists():
        return
    try:
        source = json.loads(previous.read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        source = None  # not a file this command wrote: not ours to replace either
    if source != text:
        held = f"the explanation of {source!r}" if isinstance(source, str) else "another file"
        raise UserError(
            f"{directory} holds {held} ({previous}), which this text would replace; give "
            "another --output (without it each text gets a folder of its own), or remove it"
        )


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    check_flags(args)
    if not args.text.strip():
        raise UserError('--text is empty: give a sentence to explain, e.g. --text "how are you"')
    output = args.output or args.run / EXPLAIN_DIR / folder_name(args.text)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; give a directory")
    refuse_overwriting(output, run_files(args.run))
    _refuse_another_texts_folder(output, args.text)
    decoding = decoding_from_args(read_run_config(args.run).decoding, args, nbest=1)
    translator = load_translator(args)
    explanation = explain(translator, args.text, decoding)
    if not args.quiet:
        sys.stdout.write(format_trace(explanation))
    written = write_explanation(explanation, output)
    pngs = len(written) - 1
    sys.stderr.write(f"wrote {written[0]}" + (f" and {pngs} heatmaps" if pngs else "") + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of transformer-explain; returns the exit code."""
    return run_command(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
