"""How many CPU threads a training uses: as many as there are cores that other programs leave free.

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

import os
import time
from pathlib import Path

PROC_STAT = Path("/proc/stat")
SAMPLE_SECONDS = 0.3


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
