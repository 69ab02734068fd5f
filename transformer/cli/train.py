"""`transformer-train`: train a translation model from a YAML config into a run directory."""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import shlex
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from transformer.cli.common import (
    STOP_SIGNALS,
    CommandParser,
    Interrupted,
    add_override_flag,
    run_command,
    setup_logging,
    tell,
)
from transformer.errors import UserError
from transformer.runtime.device import resolve_device
from transformer.runtime.memory import keep_freed_memory
from transformer.runtime.threads import set_threads
from transformer.training.checkpoint import LOG_FILE, TOKENIZER_DIR, checkpoint_dir
from transformer.training.distributed import (
    DistributedContext,
    context_from_environment,
    destroy_process_group,
    init_process_group,
)
from transformer.training.finetune import copy_tokenizer, load_parent_weights
from transformer.training.run import (
    RunDirectory,
    RunStart,
    build_model,
    plan_run,
    prepare_data,
    resolve_model_config,
)
from transformer.training.state import Progress
from transformer.training.tensorboard import summary_writer_class
from transformer.training.trainer import StopRequest, Trainer

logger = logging.getLogger("transformer")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of transformer-train."""
    parser = CommandParser(
        prog="transformer-train",
        allow_abbrev=False,
        description="Train an encoder-decoder Transformer from a YAML config. "
        "Run under `torchrun --nproc_per_node=N` to train on N GPUs (or CPU processes).",
    )
    parser.add_argument(
        "--config", type=Path, help="YAML config (with --resume: replaces the run's config)"
    )
    add_override_flag(parser)
    parser.add_argument(
        "--run-dir", type=Path, help="where to write the run (default: runs/<config name>)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from last.pt"
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        metavar="RUN_OR_CHECKPOINT",
        help="start from a trained run's weights and tokenizer (fine-tuning): a run directory "
        "(its best checkpoint, else last) or a checkpoint file in its checkpoints/",
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def train(argv: list[str] | None = None) -> int:
    """Parse the command line, set up the run, and train.

    Everything is checked (config, data, tokenizer, model, checkpoint) before the run
    directory gets its config.yaml and train.log; until then a failure leaves it as it was.
    """
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.run_dir is None:
        if args.config is None:
            raise UserError("give --config (and optionally --run-dir), or --run-dir with --resume")
        args.run_dir = Path("runs") / args.config.stem
    run_dir: Path = args.run_dir
    stop = StopRequest()
    context = context_from_environment()
    if not context.is_main:
        logging.getLogger("transformer").setLevel(logging.WARNING)
    with _log_buffer() as log:
        start = plan_run(run_dir, args.config, args.overrides, args.resume, args.init_from)
        if start.config.training.tensorboard:
            summary_writer_class()  # without the extra, fail before any work
        device = resolve_device(start.config.training.device, "training.device")
        if context.enabled and device.type == "cuda":
            device = torch.device("cuda", context.local_rank)
            torch.cuda.set_device(device)
        set_threads("train", device, processes=context.world_size)
        if device.type == "cpu":
            keep_freed_memory()  # no page faults for each step's activations
        init_process_group(context, device)
        try:
            progress = _set_up_and_train(start, run_dir, device, context, log, stop)
        finally:
            destroy_process_group(context)
    if stop.signum is not None:
        return _interrupted(stop.signum, progress.step, run_dir, context)
    if context.is_main:
        best = progress.best_metric  # BLEU, or the negative loss without training.eval_bleu
        if best is None:
            summary = ""
        elif start.config.training.eval_bleu:
            summary = f"; best validation BLEU {best:.2f}"
        else:
            summary = f"; best validation loss {-best:.3f}"
        run_arg = shlex.quote(str(run_dir))
        sys.stderr.write(
            f"done: {progress.step} steps{summary}\n"
            f'translate with: transformer-translate --run {run_arg} --text "..."\n'
        )
    return 0


def _set_up_and_train(
    start: RunStart,
    run_dir: Path,
    device: torch.device,
    context: DistributedContext,
    log: _LogBuffer,
    stop: StopRequest,
) -> Progress:
    """Tokenizers, data, model and checkpoint; then put the run in place and train."""
    config = start.config
    new_tokenizer = not start.reuse_tokenizer
    with StopOnSignals(stop) as signals, RunDirectory(run_dir, context, new_tokenizer) as run:
        logger.info(
            "run directory %s, device %s, %d process(es)", run_dir, device, context.world_size
        )
        tokenizer_dir = run.staging  # None: the run's own tokenizer/
        reuse_tokenizer = start.reuse_tokenizer
        if start.parent is not None and not reuse_tokenizer:
            if context.is_main:
                copy_tokenizer(start.parent.run_dir, run.staging or run_dir / TOKENIZER_DIR)
            context.barrier()
            reuse_tokenizer = True
        data = prepare_data(config, run_dir, context, reuse_tokenizer, tokenizer_dir)
        config = resolve_model_config(config, data.tokenizers)
        model = build_model(config, config.training.seed + context.rank, device)
        if start.parent is not None:
            load_parent_weights(model, start.parent)
        trainer = Trainer(
            config, model, data.tokenizers, data.train, data.valid, run_dir, device, context
        )
        if start.resume_from is not None:
            trainer.resume(start.resume_from)
        run.commit(config)
        if context.is_main:
            log.write_to(run_dir / LOG_FILE)
        signals.armed = True
        return trainer.train(stop)


def _interrupted(signum: int, step: int, run_dir: Path, context: DistributedContext) -> int:
    """Say what was saved and how to continue; the exit code is 128 + the signal number."""
    if context.is_main:
        resume = f"--run-dir {shlex.quote(str(run_dir))} --resume"
        command = (
            f"torchrun <the same options> -m transformer.cli.train {resume}"
            if context.enabled
            else f"transformer-train {resume}"
        )
        tell(
            f"interrupted by {signal.Signals(signum).name}: saved step {step} in "
            f"{checkpoint_dir(run_dir) / 'last.pt'}; resume with: {command}\n"
        )
    return 128 + signum


class StopOnSignals:
    """SIGINT, SIGTERM and SIGHUP: stop training at the next step boundary, with last.pt saved.

    Ctrl-C, `kill`, or the terminal closing (SIGHUP) all end in a checkpoint to resume from.
    Until `armed` (while setting up) a signal stops the command at once, as does a second
    signal during training; nothing half-written is left behind either way.
    """

    def __init__(self, stop: StopRequest) -> None:
        self.stop = stop
        self.armed = False
        self.previous: dict[int, object] = {}

    def handle(self, signum: int, frame: object) -> None:
        """The signal handler."""
        if not self.armed or self.stop.signum is not None:
            raise Interrupted(signum)
        self.stop.signum = signum
        logger.warning(
            "%s: stopping after this step, with a checkpoint (again: stop at once)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopOnSignals:
        for number in (signal.SIGINT, *STOP_SIGNALS):
            if signal.getsignal(number) is not signal.SIG_IGN:  # `cmd &` in a script, `nohup`
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]


class _LogBuffer(logging.handlers.MemoryHandler):
    """Holds the log of setting up a run until the run's train.log may be written."""

    def __init__(self) -> None:
        super().__init__(capacity=1_000_000, flushLevel=logging.CRITICAL + 1)

    def write_to(self, path: Path) -> None:
        """Log to `path` from now on, starting with what was held."""
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.setTarget(handler)
        self.flush()
        root = logging.getLogger()
        root.removeHandler(self)
        root.addHandler(handler)


@contextlib.contextmanager
def _log_buffer() -> Iterator[_LogBuffer]:
    buffer = _LogBuffer()
    root = logging.getLogger()
    root.addHandler(buffer)
    try:
        yield buffer
    finally:
        root.removeHandler(buffer)
        buffer.setTarget(None)
        buffer.buffer.clear()


def main(argv: list[str] | None = None) -> int:
    """Entry point of transformer-train."""
    return run_command(train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
