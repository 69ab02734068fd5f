"""`transformer-train`: train a translation model from a YAML config into a run directory."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from transformer.checkpoint import CONFIG_FILE, LOG_FILE, checkpoint_dir
from transformer.cli.common import add_override_flag, run_command, setup_logging
from transformer.config import load_config
from transformer.device import resolve_device
from transformer.distributed import (
    context_from_environment,
    destroy_process_group,
    init_process_group,
)
from transformer.errors import UserError
from transformer.run import (
    build_model,
    check_run_directory,
    prepare_data,
    resolve_model_config,
    write_config,
)
from transformer.training import Trainer

logger = logging.getLogger("transformer")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of transformer-train."""
    parser = argparse.ArgumentParser(
        prog="transformer-train",
        allow_abbrev=False,
        description="Train an encoder-decoder Transformer from a YAML config. "
        "Run under `torchrun --nproc_per_node=N` to train on N GPUs (or CPU processes).",
    )
    parser.add_argument("--config", type=Path, help="YAML config (not needed with --resume)")
    add_override_flag(parser)
    parser.add_argument(
        "--run-dir", type=Path, help="where to write the run (default: runs/<config name>)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from last.pt"
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser.parse_args(argv)


def train(argv: list[str] | None = None) -> int:
    """Parse the command line, set up the run, and train."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    if args.run_dir is None:
        if args.config is None:
            raise UserError("give --config (and optionally --run-dir), or --run-dir with --resume")
        args.run_dir = Path("runs") / args.config.stem
    run_dir: Path = args.run_dir
    check_run_directory(run_dir, args.resume)
    if args.resume:
        config = load_config(run_dir / CONFIG_FILE, args.overrides)
    elif args.config is None:
        raise UserError("give --config FILE to start a new run")
    else:
        config = load_config(args.config, args.overrides)

    context = context_from_environment()
    device = resolve_device(config.training.device)
    if context.enabled and device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    init_process_group(context, device)
    try:
        if context.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logging.getLogger().addHandler(handler)
        else:
            logging.getLogger("transformer").setLevel(logging.WARNING)
        logger.info(
            "run directory %s, device %s, %d process(es)", run_dir, device, context.world_size
        )
        data = prepare_data(config, run_dir, context, args.resume)
        config = resolve_model_config(config, data.tokenizers)
        write_config(config, run_dir, context)
        model = build_model(config, config.training.seed, device)
        torch.manual_seed(config.training.seed + context.rank)
        trainer = Trainer(
            config, model, data.tokenizers, data.train, data.valid, run_dir, device, context
        )
        if args.resume:
            trainer.resume(checkpoint_dir(run_dir) / "last.pt")
        progress = trainer.train()
        if context.is_main:
            best = progress.best_metric
            summary = f"best validation BLEU {best:.2f}" if best is not None and best >= 0 else ""
            sys.stderr.write(
                f"done: {progress.step} steps; {summary}\n"
                f'translate with: transformer-translate --run {run_dir} --text "..."\n'
            )
    finally:
        destroy_process_group(context)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of transformer-train."""
    return run_command(train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
