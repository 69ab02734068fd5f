"""The decoding flags transformer-translate and transformer-evaluate share, and the one
`load_translator` of every command that decodes (translate, evaluate, explain, serve).

--checkpoint, --beam-size, --length-penalty, --max-tokens, --device, --dtype, --workers,
--reference (transformer-evaluate: --reference-layers), --engine and --export. The bounds of
the decoding flags are `DecodingConfig`'s (transformer/config.py): a flag's error is the
config's message under the flag's name.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch

from transformer.cli.engine import add_engine_flags, ctranslate2_translator, uses_ctranslate2
from transformer.config import MAX_LENGTH_PENALTY, ConfigError, DecodingConfig
from transformer.decoding.translator import Translator
from transformer.errors import UserError
from transformer.export.engine import CTranslate2Translator
from transformer.runtime.device import resolve_device
from transformer.runtime.threads import Kind, set_threads

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# The decoding settings that a flag changes: setting -> flag (its dest is the flag's name).
FLAGS = {
    "beam_size": "--beam-size",
    "nbest": "--nbest",
    "length_penalty": "--length-penalty",
    "batch_tokens": "--max-tokens",
}
REFERENCE_HELP = (
    "the paper's layers only, without the fast paths of transformer/model/fast.py: slower, "
    "for checking"
)


def flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding settings the command line gives, {setting: value}; flags not given (or
    that the command does not have) are left out."""
    options = vars(args)
    given = {name: options.get(flag[2:].replace("-", "_")) for name, flag in FLAGS.items()}
    return {name: value for name, value in given.items() if value is not None}


def check_flags(args: argparse.Namespace) -> None:
    """Refuse impossible decoding flags before anything is read or loaded.

    Each decoding flag is checked by `DecodingConfig.check_setting` (how flags relate to the
    run's settings, nbest <= beam_size, when `decoding_from_args` builds the whole config).
    """
    for name, value in flag_settings(args).items():
        try:
            DecodingConfig.check_setting(name, value)
        except ConfigError as error:
            raise UserError(f"{FLAGS[name]}: {error.message}") from None
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1 (got {args.workers})")
    if args.reference_layers and args.engine != "pytorch":
        raise UserError(
            f"{args.reference_flag} builds the model's own layers: it needs --engine pytorch, "
            f"not --engine {args.engine} (an export decodes with its own code)"
        )


def decoding_from_args(
    base: DecodingConfig, args: argparse.Namespace, nbest: int | None = None
) -> DecodingConfig:
    """The run's decoding settings with the command-line flags (and `nbest`) applied."""
    changes = flag_settings(args)
    if nbest is not None:
        changes["nbest"] = nbest
    try:
        return dataclasses.replace(base, **changes)
    except ConfigError as error:
        flag = FLAGS.get(error.key, f"decoding.{error.key}")
        hint = "; raise --beam-size" if error.key == "nbest" else ""
        raise UserError(f"{flag}: {error.message}{hint}") from None


def add_decoding_flags(parser: argparse.ArgumentParser, short_reference: bool = True) -> None:
    """--checkpoint, --beam-size, --length-penalty, --max-tokens, --device, --dtype,
    --workers, --reference (see `add_reference_flag`), --engine, --export, --verbose."""
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
        help=f"GNMT length penalty exponent alpha, 0 to {MAX_LENGTH_PENALTY:g} "
        "(default: from config)",
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
    add_reference_flag(parser, short_reference)
    add_engine_flags(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_reference_flag(parser: argparse.ArgumentParser, short: bool = True) -> None:
    """--reference (or --reference-layers): decode with the paper's layers as written
    (`build_model(fast=False)`). `short` False: only --reference-layers, for
    transformer-evaluate, whose --reference names the reference translations."""
    names = ["--reference", "--reference-layers"] if short else ["--reference-layers"]
    parser.add_argument(*names, dest="reference_layers", action="store_true", help=REFERENCE_HELP)
    parser.set_defaults(reference_flag=names[0])  # how its error names it


def load_translator(
    args: argparse.Namespace, kind: Kind = "translate"
) -> Translator | CTranslate2Translator:
    """The run's translator as --checkpoint, --device, --dtype, --workers, --reference(-layers)
    and --engine say, with the CPU's threads set by the thread policy of `kind` (`set_threads`).

    A server ("serve") decodes `--workers` batches at once in its own batcher, each batch one
    call of a translator that decodes it alone.
    """
    device = resolve_device(args.device)
    plan = set_threads(kind, device, args.workers)
    workers = 1 if kind == "serve" else plan.workers
    if uses_ctranslate2(args):  # --engine ctranslate2: transformer/cli/engine.py
        return ctranslate2_translator(args, device, workers)
    return Translator.from_run(
        args.run,
        args.checkpoint,
        device,
        DTYPES[args.dtype],
        workers,
        fast=not args.reference_layers,
    )
