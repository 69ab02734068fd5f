"""How many CPU threads each command uses: one policy, `plan_threads`, that every CLI asks.

    train      one thread per core that other programs leave free (below)
    translate  `workers` batches at once (default 2 when there are 2 threads or more), the
               threads shared out among them (transformer-translate, -evaluate; -explain
               decodes one sentence: 1 worker, every thread)
    serve      as translate, but one core is left to the HTTP server (default 1 worker)

On a GPU the CPU threads only feed it: the count torch chose is kept.

torch starts one thread per core. Each operation is split among them, and every thread waits
at its end for the slowest. When another program keeps a core busy, the thread that shares
that core runs a fraction of the time and every operation waits for it: two threads can then
train slower than one. So, unless the user chose (OMP_NUM_THREADS or `torch.set_num_threads`
before), a training looks at how busy the cores are for a moment at its start and keeps one
thread per core that is free. The other half of the policy is OMP_WAIT_POLICY=PASSIVE
(`transformer/cli/__init__.py`): a thread waiting for the others sleeps instead of spinning
on a core another program needs. README: "Threads on a shared machine".
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

logger = logging.getLogger(__name__)

PROC_STAT = Path("/proc/stat")
SAMPLE_SECONDS = 0.3

Kind = Literal["train", "translate", "serve"]


@dataclass(frozen=True)
class Machine:
    """What the thread policy looks at: torch's threads, the cores, who chose, who is busy."""

    threads: int  # torch's threads now: one per core, or what OMP_NUM_THREADS chose
    cores: int
    chosen: bool = False  # the user chose the count (OMP_NUM_THREADS)
    busy: float | None = None  # cores other programs keep busy (None: not measured)


@dataclass(frozen=True)
class ThreadPlan:
    """How a command runs on the CPU: torch's thread count and batches decoded at once."""

    threads: int
    workers: int


def plan_threads(
    kind: Kind,
    device: torch.device,
    machine: Machine,
    workers: int | None = None,
    processes: int = 1,
) -> ThreadPlan:
    """The threads and workers of a `kind` of command on `device` (`workers` None: default).

    train: on a CPU, one thread per core other programs leave free (`threads_for`), unless
        the user chose (OMP_NUM_THREADS), several `processes` train together (torchrun gives
        each its OMP_NUM_THREADS) or how busy the cores are is unknown; one worker.
    translate: on a CPU, `workers` (default 2 when torch has 2 threads or more: a decoding
        step is many small operations, which keep two batches' cores busier than one
        batch's two threads) share the threads, `threads // workers` each, at least one.
    serve: on a CPU, the workers (default 1) share all threads but one, `(threads - 1) //
        workers` each, at least one: the HTTP server needs a core, and torch threads that
        wait for a busy core slow down many times over.
    Elsewhere (a GPU) torch's threads are kept; workers default to 1.
    """
    on_cpu = device.type == "cpu"
    if kind == "train":
        if not on_cpu or machine.chosen or processes > 1 or machine.busy is None:
            return ThreadPlan(machine.threads, 1)
        return ThreadPlan(threads_for(machine.cores, machine.busy, machine.threads), 1)
    if kind == "translate":
        workers = workers or (2 if on_cpu and machine.threads >= 2 else 1)
        if not on_cpu:
            return ThreadPlan(machine.threads, workers)
        return ThreadPlan(max(1, machine.threads // workers), workers)
    if kind == "serve":
        workers = workers or 1
        if not on_cpu:
            return ThreadPlan(machine.threads, workers)
        return ThreadPlan(max(1, (machine.threads - 1) // workers), workers)
    raise ValueError(f"kind must be train, translate or serve (got {kind!r})")


def set_threads(
    kind: Kind, device: torch.device, workers: int | None = None, processes: int = 1
) -> ThreadPlan:
    """Look at this machine, plan its threads (`plan_threads`) and set torch's; the plan.

    Only a lone training on a CPU samples how busy the cores are (for SAMPLE_SECONDS), and
    says in one log line when it takes fewer threads than torch would.
    """
    threads = torch.get_num_threads()
    chosen = bool(os.environ.get("OMP_NUM_THREADS"))
    measure = kind == "train" and device.type == "cpu" and not chosen and processes == 1
    machine = Machine(threads, os.cpu_count() or threads, chosen, busy_cores() if measure else None)
    plan = plan_threads(kind, device, machine, workers, processes)
    if plan.threads != threads:
        torch.set_num_threads(plan.threads)
    if kind == "train" and plan.threads < threads:
        logger.info(
            "other programs keep %.1f cores busy: training on %d thread(s), not %d "
            "(OMP_NUM_THREADS=N chooses)",
            machine.busy,
            plan.threads,
            threads,
        )
    return plan


def threads_for(cores: int, busy_elsewhere: float, wanted: int) -> int:
    """Threads to use: `wanted` at most, one per core not kept busy by other programs.

    A core counts as busy from half a core's worth of other work on; at least one thread.
    """
    free = cores - int(busy_elsewhere + 0.5)
    return max(1, min(wanted, free))


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """How many cores all programs kept busy over `seconds` (None where /proc/stat is not).

    Called before the training starts, so what it sees is other programs' work.
    """
    try:
        first = _busy_and_total()
        time.sleep(seconds)
        second = _busy_and_total()
    except (OSError, ValueError, IndexError):
        return None
    total = second[1] - first[1]
    if total <= 0:
        return None
    return (os.cpu_count() or 1) * (second[0] - first[0]) / total


def _busy_and_total() -> tuple[int, int]:
    """Jiffies spent busy and in all, over all cores, from the first line of /proc/stat."""
    fields = [int(value) for value in PROC_STAT.read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)
