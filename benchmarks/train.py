"""Training-pipeline speed: the whole `Trainer.train` loop against the bare training step.

The pipeline is the real code path of transformer-train: `prepare_data` (corpus, tokenizer,
encoding), the `TokenBatchSampler`, and `Trainer.train`, which for every step collates the
batch from the encoded corpus, copies it to the device, runs forward, label-smoothed loss,
backward, gradient clipping, the learning-rate schedule and the optimizer step. Validation
and checkpoints are left out (no validation set, no checkpoint writes).

The bare step is the same model (built from the same config) with the same loss, gradient
clipping and Adam settings on synthetic batches made beforehand and already on the device:
random ids with exactly the shapes (sentences, source and target lengths, padding) of the
batches the pipeline trains on, so both do the same arithmetic on the same token budget and
the difference is what the pipeline adds (data, collate, copies, the loop's bookkeeping).

    python -m benchmarks.train                          # Multi30k en-de, CPU [+ CUDA]
    python -m benchmarks.train --steps 60 --warmup 5 --rounds 2
    python -m benchmarks.train --set training.precision=bf16 --devices cuda

Speeds count only the timed steps after the warm-up, each from its start to the start of the
next, so the loop's own work between steps is counted. On CPU the rates come from the median
time per padded token of a step (steps slowed down by other programs on the machine do not
count); on CUDA, where steps run asynchronously, from the whole timed span. "target" tokens
are the non-padding target tokens (what the loss averages over); "padded" tokens are each
batch's size x its longest side (source or target, end-of-sentence counted), what
training.batch_tokens bounds. "busy cores" is CPU time over wall time: below --threads when
other programs take the CPU (OMP_WAIT_POLICY=PASSIVE, set for the workers unless given,
keeps idle OpenMP threads from spinning). Memory: CPU, the peak resident set above the size
before the model was built (the corpus is not counted); CUDA, `max_memory_allocated`.
Each measurement runs in its own subprocess unless --in-process (--quick), where memory
figures after the first are less exact (freed memory stays with the allocator).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.common import (
    FIRST_WORD_ID,
    add_threads_flag,
    as_flags,
    current_rss_mib,
    peak_rss_mib,
    reset_peak_rss,
    round_order,
    run_worker,
    synchronize,
)
from transformer.cli.common import add_override_flag, run_command
from transformer.config import Config, load_config
from transformer.data.batching import TokenBatchSampler
from transformer.data.corpus import EncodedCorpus
from transformer.data.special_ids import BOS_ID, EOS_ID, PAD_ID
from transformer.data.tokenizer import TokenizerPair
from transformer.model import Transformer
from transformer.runtime.device import autocast_dtype, resolve_device
from transformer.training.distributed import DistributedContext
from transformer.training.loss import label_smoothed_loss
from transformer.training.run import PreparedData, build_model, prepare_data, resolve_model_config
from transformer.training.trainer import Trainer, ValidationResult

KINDS = ("pipeline", "bare step")
DEFAULT_CONFIG = Path("configs/multi30k_en_de.yaml")
TARGET_OVERHEAD = 0.10  # the pipeline may be at most this much slower than the bare step


@dataclass
class Measurement:
    """One timed run: `steps` optimizer steps after the warm-up."""

    device: str
    kind: str
    steps: int
    seconds: float  # from the start of the first timed step to the end of the last
    cpu_seconds: float
    target_tokens: int
    padded_tokens: int
    memory_mib: float
    step_seconds: list[float]  # each timed step, up to the start of the next
    step_padded: list[int]  # each timed step's padded tokens

    @property
    def rate_seconds(self) -> float:
        """The time the rates are computed from.

        On CPU, the median time per padded token of a step, times the padded tokens: steps
        slowed down by other programs do not count. On CUDA, where steps run asynchronously,
        the whole timed span.
        """
        if self.device.startswith("cuda") or not self.step_seconds:
            return self.seconds
        per_token = [
            dt / max(n, 1) for dt, n in zip(self.step_seconds, self.step_padded, strict=True)
        ]
        return float(np.median(per_token)) * self.padded_tokens

    @property
    def target_per_s(self) -> float:
        """Non-padding target tokens per second."""
        return self.target_tokens / max(self.rate_seconds, 1e-9)

    @property
    def padded_per_s(self) -> float:
        """Padded tokens (batch size x longest side) per second."""
        return self.padded_tokens / max(self.rate_seconds, 1e-9)

    @property
    def busy_cores(self) -> float:
        """CPU time over wall time of the timed steps."""
        return self.cpu_seconds / max(self.seconds, 1e-9)


# --------------------------------------------------------------------------- the plan


def padded_tokens(corpus: EncodedCorpus, indices: Sequence[int]) -> int:
    """A batch's size times its longest side: what the sampler charges against batch_tokens."""
    rows = np.asarray(indices, dtype=np.int64)
    longest = max(int(corpus.src_lengths[rows].max()), int(corpus.tgt_lengths[rows].max()))
    return len(rows) * longest


def planned_groups(
    sampler: TokenBatchSampler, accumulate_steps: int, count: int
) -> list[list[list[int]]]:
    """The batches of the first `count` optimizer steps, grouped as `Trainer.train` takes them."""
    groups: list[list[list[int]]] = []
    epoch = 0
    while len(groups) < count:
        batches = sampler.batches(epoch)
        for start in range(0, len(batches), accumulate_steps):
            groups.append(batches[start : start + accumulate_steps])
            if len(groups) == count:
                break
        epoch += 1
    return groups


def benchmark_config(path: Path, overrides: Sequence[str], device: str, total_steps: int) -> Config:
    """The config of `path` with the benchmark's settings: no validation, no progress bar."""
    settings = [
        *overrides,
        f"training.device={device}",
        f"training.max_steps={total_steps}",
        "training.max_epochs=1000000",
        "training.max_time_minutes=0",
        f"training.eval_every={total_steps + 1}",
        "training.save_every=0",
        "training.progress_bar=false",
        "data.valid=null",
    ]
    return load_config(path, settings)


# --------------------------------------------------------------------------- memory


class MemoryMeter:
    """Peak memory of what happens after `start`: CPU resident set or CUDA allocations."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline = 0.0

    def start(self) -> None:
        """Take the baseline and restart the peak count."""
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            reset_peak_rss()
            self.baseline = current_rss_mib()

    def peak_mib(self) -> float:
        """The peak above the baseline, in MiB."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.baseline
        return peak_rss_mib() - self.baseline


# --------------------------------------------------------------------------- the pipeline


class TimedTrainer(Trainer):
    """`Trainer` that records when each step starts and ends, and writes no checkpoints."""

    def __init__(
        self,
        config: Config,
        model: Transformer,
        tokenizers: TokenizerPair,
        train_data: EncodedCorpus,
        run_dir: Path,
        device: torch.device,
    ) -> None:
        super().__init__(config, model, tokenizers, train_data, None, run_dir, device)
        self.starts: list[tuple[float, float]] = []  # (wall, CPU) time at each step's start
        self.end: tuple[float, float] = (0.0, 0.0)  # after the last step
        self.groups: list[list[list[int]]] = []  # each step's batches
        self.target_tokens: list[int] = []

    def train_step(self, batches: list[list[int]]) -> tuple[torch.Tensor, int]:
        """The real step, timed."""
        self.starts.append((time.perf_counter(), time.process_time()))
        loss, tokens = super().train_step(batches)
        if self.progress.step >= self.cfg.max_steps and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the last optimizer step may still be queued
        self.end = (time.perf_counter(), time.process_time())
        self.groups.append(batches)
        self.target_tokens.append(tokens)
        return loss, tokens

    def save(self, result: ValidationResult | None = None, improved: bool = False) -> None:
        """Checkpoints are not part of what is measured."""


def measure_pipeline(
    config: Config, data: PreparedData, run_dir: Path, device: torch.device, warmup: int
) -> Measurement:
    """Run `Trainer.train` for warm-up + timed steps and time the timed ones."""
    meter = MemoryMeter(device)
    meter.start()
    model = build_model(config, config.training.seed, device)
    torch.manual_seed(config.training.seed)
    trainer = TimedTrainer(config, model, data.tokenizers, data.train, run_dir, device)
    trainer.train()
    (wall, cpu), (end_wall, end_cpu) = trainer.starts[warmup], trainer.end
    walls = [start for start, _ in trainer.starts[warmup:]] + [end_wall]
    padded = [
        sum(padded_tokens(data.train, indices) for indices in group)
        for group in trainer.groups[warmup:]
    ]
    return Measurement(
        device=str(device),
        kind="pipeline",
        steps=len(padded),
        seconds=end_wall - wall,
        cpu_seconds=end_cpu - cpu,
        target_tokens=sum(trainer.target_tokens[warmup:]),
        padded_tokens=sum(padded),
        memory_mib=meter.peak_mib(),
        step_seconds=np.diff(walls).tolist(),
        step_padded=padded,
    )


# --------------------------------------------------------------------------- the bare step


def synthetic_batch(
    src_lengths: np.ndarray, tgt_lengths: np.ndarray, vocab_sizes: tuple[int, int], seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Random ids padded like a real batch: src (B, S), tgt_in (B, T), tgt_out (B, T).

    Lengths count the end-of-sentence token, as in `EncodedCorpus`.
    """
    generator = torch.Generator().manual_seed(seed)
    src_len = torch.as_tensor(src_lengths, dtype=torch.long)[:, None]  # (B, 1)
    tgt_len = torch.as_tensor(tgt_lengths, dtype=torch.long)[:, None]  # (B, 1)
    B, S, T = len(src_lengths), int(src_len.max()), int(tgt_len.max())
    src = torch.randint(FIRST_WORD_ID, vocab_sizes[0], (B, S), generator=generator)  # (B, S)
    positions = torch.arange(S)[None, :]  # (1, S)
    src[positions == src_len - 1] = EOS_ID
    src[positions >= src_len] = PAD_ID
    tgt_out = torch.randint(FIRST_WORD_ID, vocab_sizes[1], (B, T), generator=generator)  # (B, T)
    positions = torch.arange(T)[None, :]  # (1, T)
    tgt_out[positions == tgt_len - 1] = EOS_ID
    tgt_out[positions >= tgt_len] = PAD_ID
    tgt_in = torch.cat([torch.full((B, 1), BOS_ID), tgt_out[:, :-1]], dim=1)  # (B, T)
    tgt_in[positions >= tgt_len] = PAD_ID
    return src, tgt_in, tgt_out


def measure_bare_step(
    config: Config, data_train: EncodedCorpus, device: torch.device, warmup: int
) -> Measurement:
    """Time forward, loss, backward, clipping and Adam on pre-made batches already on device."""
    cfg = config.training
    sampler = TokenBatchSampler(
        data_train.src_lengths, data_train.tgt_lengths, cfg.batch_tokens, cfg.seed, shuffle=True
    )
    groups = planned_groups(sampler, cfg.accumulate_steps, cfg.max_steps)
    vocab_sizes = (config.model.src_vocab_size or 0, config.model.tgt_vocab_size or 0)
    steps = []
    for number, group in enumerate(groups):
        batches = [
            tuple(
                t.to(device)
                for t in synthetic_batch(
                    data_train.src_lengths[indices],
                    data_train.tgt_lengths[indices],
                    vocab_sizes,
                    seed=number * 1000 + k,
                )
            )
            for k, indices in enumerate(group)
        ]
        target = int(sum(data_train.tgt_lengths[indices].sum() for indices in group))
        padded = sum(padded_tokens(data_train, indices) for indices in group)
        steps.append((batches, target, padded))

    meter = MemoryMeter(device)
    meter.start()
    model = build_model(config, cfg.seed, device).train()
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=cfg.lr,
        betas=(cfg.optimizer_betas[0], cfg.optimizer_betas[1]),
        eps=cfg.optimizer_eps,
        weight_decay=cfg.weight_decay,
    )
    dtype = autocast_dtype(cfg.precision, device)

    def step(batches: list[tuple[Tensor, Tensor, Tensor]], tokens: int) -> None:
        for src, tgt_in, tgt_out in batches:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(src, tgt_in)  # (B, T, V)
                loss = label_smoothed_loss(logits, tgt_out, cfg.label_smoothing, PAD_ID)
            (loss / tokens).backward()
        if cfg.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batches, tokens, _ in steps[:warmup]:
        step(batches, tokens)
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    walls = [wall]
    for batches, tokens, _ in steps[warmup:]:
        step(batches, tokens)
        walls.append(time.perf_counter())
    synchronize(device)
    timed = steps[warmup:]
    return Measurement(
        device=str(device),
        kind="bare step",
        steps=len(timed),
        seconds=time.perf_counter() - wall,
        cpu_seconds=time.process_time() - cpu,
        target_tokens=sum(target for _, target, _ in timed),
        padded_tokens=sum(padded for _, _, padded in timed),
        memory_mib=meter.peak_mib(),
        step_seconds=np.diff(walls).tolist(),
        step_padded=[padded for _, _, padded in timed],
    )


# --------------------------------------------------------------------------- one measurement


def prepare_run(config: Config, run_dir: Path, reuse: bool) -> tuple[Config, PreparedData]:
    """Tokenizers and encoded training data (trained once, then reused from `run_dir`)."""
    data = prepare_data(config, run_dir, DistributedContext(), resume=reuse)
    return resolve_model_config(config, data.tokenizers), data


def measure(args: argparse.Namespace, kind: str, device_name: str) -> Measurement:
    """One measurement in this process."""
    device = resolve_device(device_name)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        total = args.warmup + args.steps
        config = benchmark_config(args.config, args.overrides, device_name, total)
        config, data = prepare_run(config, args.work_dir / "run", reuse=True)
        if kind == "pipeline":
            return measure_pipeline(config, data, args.work_dir / "run", device, args.warmup)
        return measure_bare_step(config, data.train, device, args.warmup)
    finally:
        torch.set_num_threads(threads)  # as it was, for the caller (in-process runs)


def measure_in_worker(args: argparse.Namespace, kind: str, device: str) -> Measurement:
    """One measurement in a fresh subprocess, so that its peak memory is its own."""
    arguments = ["--worker", kind, "--devices", device]
    arguments += as_flags(args, ("config", "work_dir", "steps", "warmup", "threads"))
    if args.overrides:
        arguments += ["--set", *args.overrides]
    passive = {"OMP_WAIT_POLICY": "PASSIVE"}  # idle OpenMP threads do not spin
    return Measurement(**run_worker("benchmarks.train", arguments, f"{kind} on {device}", passive))


# --------------------------------------------------------------------------- the report


def describe_config(config: Config) -> str:
    """E.g. "d_model 256, 3+3 layers, 4 heads, d_ff 1024, vocabulary 8000/8000"."""
    model = config.model
    return (
        f"d_model {model.d_model}, {model.num_encoder_layers}+{model.num_decoder_layers} layers, "
        f"{model.num_heads} heads, d_ff {model.d_ff}, vocabulary "
        f"{model.src_vocab_size}/{model.tgt_vocab_size}, dropout {model.dropout}; "
        f"batch_tokens {config.training.batch_tokens} x {config.training.accumulate_steps}, "
        f"precision {config.training.precision}"
    )


def format_table(measurements: Sequence[Measurement]) -> str:
    """The results, one row per measurement, with the pipeline/bare ratio of each device."""
    header = (
        f"{'device':<8} {'measurement':<15} {'steps':>5} {'target tok/s':>13} "
        f"{'padded tok/s':>13} {'target/padded':>13} {'busy cores':>10} {'peak MiB':>9}"
    )
    lines = [header, "-" * len(header)]
    devices = list(dict.fromkeys(m.device for m in measurements))
    for device in devices:
        rows = {m.kind: m for m in measurements if m.device == device}
        for kind in KINDS:
            if kind in rows:
                m = rows[kind]
                lines.append(
                    f"{device:<8} {kind:<15} {m.steps:>5} {m.target_per_s:>13,.0f} "
                    f"{m.padded_per_s:>13,.0f} {m.target_tokens / max(m.padded_tokens, 1):>13.2f} "
                    f"{m.busy_cores:>10.2f} {m.memory_mib:>9,.0f}"
                )
        if all(kind in rows for kind in KINDS):
            pipeline, bare = rows["pipeline"], rows["bare step"]
            lines.append(
                f"{device:<8} {'pipeline/bare':<15} {'':>5} "
                f"{pipeline.target_per_s / bare.target_per_s:>12.3f}x "
                f"{pipeline.padded_per_s / bare.padded_per_s:>12.3f}x"
            )
    return "\n".join(lines)


def verdicts(measurements: Sequence[Measurement], limit: float = TARGET_OVERHEAD) -> list[str]:
    """Per device: how much slower the pipeline is than the bare step, against the target."""
    lines = []
    for device in dict.fromkeys(m.device for m in measurements):
        rows = {m.kind: m for m in measurements if m.device == device}
        if not all(kind in rows for kind in KINDS):
            continue
        slowdown = 1.0 - rows["pipeline"].padded_per_s / rows["bare step"].padded_per_s
        verdict = "within the target" if slowdown <= limit else "OVER the target"
        comparison = f"{slowdown:.1%} slower" if slowdown >= 0 else f"{-slowdown:.1%} faster"
        lines.append(
            f"{device}: the pipeline is {comparison} than the bare step at equal padded tokens "
            f"({verdict}: at most {limit:.0%} slower)"
        )
    return lines


def best_of(measurements: Sequence[Measurement]) -> list[Measurement]:
    """The fastest round of each (device, kind), in first-seen order."""
    best: dict[tuple[str, str], Measurement] = {}
    for m in measurements:
        key = (m.device, m.kind)
        if key not in best or m.padded_per_s > best[key].padded_per_s:
            best[key] = m
    return list(best.values())


# --------------------------------------------------------------------------- the command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; steps and warm-up default per device (CPU 30/5, CUDA 100/20)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="training config")
    add_override_flag(parser)
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu [+ cuda]")
    parser.add_argument("--steps", type=int, default=None, help="timed steps")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=1, help="repeat; keep each best round")
    add_threads_flag(parser)
    parser.add_argument(
        "--in-process", action="store_true", help="measure in this process (no subprocesses)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test: 3 steps after 1, in this process"
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary one")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.in_process = True
        args.steps = 3 if args.steps is None else args.steps
        args.warmup = 1 if args.warmup is None else args.warmup
    for name in ("steps", "rounds", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must be at least 0")
    return args


def run_device(args: argparse.Namespace, device: str) -> list[Measurement]:
    """Every round of both measurements on one device (the order alternates between rounds)."""
    settings = argparse.Namespace(**vars(args))
    cuda = device.startswith("cuda")
    settings.steps = args.steps if args.steps is not None else (100 if cuda else 30)
    settings.warmup = args.warmup if args.warmup is not None else (20 if cuda else 5)
    results = []
    for round_index in range(args.rounds):
        for kind in round_order(KINDS, round_index):
            if args.in_process:
                results.append(measure(settings, kind, device))
            else:
                results.append(measure_in_worker(settings, kind, device))
    return results


def benchmark(argv: list[str] | None = None) -> list[Measurement]:
    """Prepare the data once, measure both on every device, print the table."""
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(dataclasses.asdict(measure(args, args.worker, args.devices[0]))))
        return []
    logging.basicConfig(level=logging.WARNING)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    with contextlib.ExitStack() as stack:
        if args.work_dir is None:
            temporary = stack.enter_context(tempfile.TemporaryDirectory(prefix="benchmark_train."))
            args.work_dir = Path(temporary)
        config = benchmark_config(args.config, args.overrides, "cpu", 1)
        start = time.perf_counter()
        config, data = prepare_run(config, args.work_dir / "run", reuse=False)
        unset = "unset" if args.in_process else "PASSIVE (set for the workers)"
        policy = os.environ.get("OMP_WAIT_POLICY", unset)
        print(
            f"{args.config}: {describe_config(config)}; {len(data.train)} training pairs "
            f"(tokenizer and encoding: {time.perf_counter() - start:.1f} s)\n"
            f"CPU threads {args.threads}; OMP_WAIT_POLICY={policy}; "
            f"{args.rounds} round(s), the best kept",
            flush=True,
        )
        results = []
        for device in devices:
            results.extend(run_device(args, device))
    best = best_of(results)
    print(format_table(best))
    for line in verdicts(best):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps([dataclasses.asdict(m) for m in best], indent=1))
    return best


def main(argv: list[str] | None = None) -> int:
    """Entry point: a bad config or a missing corpus becomes `error: ...` and exit code 2."""

    def command(arguments: list[str] | None) -> int:
        benchmark(arguments)
        return 0

    return run_command(command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
