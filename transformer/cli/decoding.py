"""The decoding flags transformer-translate and transformer-evaluate share, and the translator.

--checkpoint, --beam-size, --length-penalty, --max-tokens, --device, --dtype, --workers,
--engine and --export.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from transformer.cli.engine import add_engine_flags, ctranslate2_translator, uses_ctranslate2
from transformer.config import (
    MAX_LENGTH_PENALTY,
    ConfigError,
    DecodingConfig,
    check_length_penalty,
)
from transformer.decoding.translator import Translator
from transformer.errors import UserError
from transformer.export.engine import CTranslate2Translator
from transformer.runtime.device import resolve_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

_FLAGS = {
    "beam_size": "--beam-size",
    "nbest": "--nbest",
    "length_penalty": "--length-penalty",
    "batch_tokens": "--max-tokens",
}


def positive_flags(args: argparse.Namespace) -> None:
    """Reject impossible decoding flags before anything slow is loaded."""
    checks = [
        ("--beam-size", args.beam_size, 1),
        ("--max-tokens", args.max_tokens, 1),
        ("--workers", args.workers, 1),
    ]
    for flag, value, low in checks:
        if value is not None and value < low:
            raise UserError(f"{flag} must be >= {low} (got {value})")
    if args.length_penalty is not None:
        try:
            check_length_penalty(args.length_penalty)  # the config's own check
        except ConfigError as error:
            raise UserError(f"--length-penalty: {error.message}") from None


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
    add_engine_flags(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def load_translator(args: argparse.Namespace) -> Translator | CTranslate2Translator:
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
