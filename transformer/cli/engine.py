"""`--engine` and `--export` of transformer-translate and transformer-evaluate: which code
decodes, the model's own (pytorch) or a CTranslate2 export of it (ctranslate2)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from transformer.errors import UserError
from transformer.export.directory import DEFAULT_EXPORT_DIR, default_export_dir, ensure_export
from transformer.export.engine import CTranslate2Translator
from transformer.export.spec import EXTRA, import_ctranslate2
from transformer.training.checkpoint import CHECKPOINT_NAMES, run_files

ENGINES = ("pytorch", "ctranslate2")


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """--engine pytorch|ctranslate2 and --export DIR."""
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="pytorch",
        help="pytorch (the model's own code, the default) or ctranslate2 (a CTranslate2 "
        f"export of it, faster on a CPU; needs {EXTRA})",
    )
    parser.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="with --engine ctranslate2: the transformer-export directory to decode with "
        f"(default: RUN/{DEFAULT_EXPORT_DIR}, exported from --checkpoint when missing or "
        "out of date)",
    )


def uses_ctranslate2(args: argparse.Namespace) -> bool:
    """Whether the flags ask for the CTranslate2 engine (an --export is refused without it)."""
    if args.engine != "ctranslate2" and args.export is not None:
        raise UserError(f"--export {args.export} is a CTranslate2 export: add --engine ctranslate2")
    return args.engine == "ctranslate2"


def model_files(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """What decoding reads, which no output may replace (for `refuse_overwriting`): the
    run's files, --checkpoint, and with --engine ctranslate2 the export."""
    files = run_files(args.run)
    if args.checkpoint not in CHECKPOINT_NAMES:
        files.append(("--checkpoint", Path(args.checkpoint)))
    if args.engine == "ctranslate2":
        files.append(("the CTranslate2 export", args.export or default_export_dir(args.run)))
    return files


def ctranslate2_translator(
    args: argparse.Namespace, device: torch.device, workers: int
) -> CTranslate2Translator:
    """The CTranslate2 engine on `device`, `workers` batches at once, each on the threads
    torch has (the caller has shared the CPU's threads out among the workers)."""
    if args.dtype != "float32":
        raise UserError(
            f"--dtype {args.dtype} is for --engine pytorch; a CTranslate2 export keeps its own "
            "weights' type (transformer-export --quantization int8, for example)"
        )
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {args.device}: CTranslate2 runs on cpu or cuda only")
    import_ctranslate2()  # before any export work: one line naming the extra if missing
    directory = args.export or ensure_export(args.run, args.checkpoint)
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    return CTranslate2Translator.from_export(
        directory, device.type, device.index or 0, workers, threads
    )
