"""What the benchmarks share: where things are, their clock, memory meters and worker processes.

Each benchmark is a module run from the repository root, e.g. `python -m benchmarks.decode
--help`; a benchmark imports nothing of another one, only this module and the public names
of `transformer`.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from transformer.config import ModelConfig
from transformer.data.special_ids import BOS_ID, EOS_ID, PAD_ID, UNK_ID

REPO = Path(__file__).resolve().parents[1]
MULTI30K = REPO.parent / "shared" / "data" / "multi30k"  # where the Multi30k configs read it
FIRST_WORD_ID = max(PAD_ID, UNK_ID, BOS_ID, EOS_ID) + 1  # random word ids start above these
THREADS = 2  # CPU threads unless --threads says otherwise: what a small shared machine has

T = TypeVar("T")


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """The --threads option every benchmark that computes in its own process takes."""
    parser.add_argument(
        "--threads", type=int, default=THREADS, help=f"CPU threads (default {THREADS})"
    )


# --------------------------------------------------------------------------- the clock


def milliseconds(run: Callable[[], None], repeats: int) -> float:
    """Median wall time of `run` in ms, after two untimed runs."""
    run(), run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that the clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_order(kinds: Sequence[T], round_index: int) -> Sequence[T]:
    """The kinds in turn, reversed every other round, so that none always runs first."""
    return kinds if round_index % 2 == 0 else kinds[::-1]


# --------------------------------------------------------------------------- memory


def current_rss_mib() -> float:
    """Resident set size of this process now, in MiB (Linux)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS count (VmHWM) at the current size, where Linux allows."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """The peak resident set size (VmHWM; the process's lifetime peak where it is absent)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- the machine, the data


def cpu_name() -> str:
    """The CPU's model name, its core count and its vector extensions."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return f"unknown CPU, {os.cpu_count()} cores"
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.MULTILINE)
    flags_line = re.search(r"^flags\s*:\s*(.+)$", info, re.MULTILINE)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    wanted = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
    model = name.group(1).strip() if name else "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, {' '.join(wanted) or 'no avx2'}"


def read_gzip_lines(path: Path, limit: int | None = None) -> list[str]:
    """The lines of a gzipped text file (the first `limit`), without their line ends."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = [line.rstrip("\n") for line in handle]
    return lines[:limit] if limit else lines


def model_config(
    vocab_size: int,
    d_model: int = 256,
    num_heads: int = 4,
    d_ff: int = 1024,
    num_layers: int = 3,
    dropout: float = 0.1,
) -> ModelConfig:
    """The benchmarks' model: post-norm, ReLU, one vocabulary shared and tied to the output."""
    return ModelConfig(
        src_vocab_size=vocab_size,
        tgt_vocab_size=vocab_size,
        d_model=d_model,
        num_heads=num_heads,
        d_ff=d_ff,
        num_encoder_layers=num_layers,
        num_decoder_layers=num_layers,
        dropout=dropout,
        share_embeddings=True,
        tie_output_embeddings=True,
    )


# --------------------------------------------------------------------------- worker processes


def as_flags(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    """`--name value` for each of `names` in `args` (its underscores as dashes), for a worker."""
    flags = [(f"--{name.replace('_', '-')}", str(getattr(args, name))) for name in names]
    return [item for flag in flags for item in flag]


def run_worker(
    module: str,
    arguments: Sequence[str],
    what: str,
    environment_defaults: Mapping[str, str] | None = None,
) -> dict:
    """`python -m module arguments` in a fresh process, so that its peak memory is its own;
    the JSON object it prints last. `environment_defaults` apply where the environment has
    no value of its own."""
    environment = {**(environment_defaults or {}), **os.environ}
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    environment["PYTHONPATH"] = os.pathsep.join(paths)  # `benchmarks` from any folder
    command = [sys.executable, "-m", module, *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if done.returncode != 0:
        raise SystemExit(f"error: the {what} run failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
