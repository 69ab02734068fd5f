"""Keep the memory a training step frees for the next step, instead of handing it back.

glibc's malloc serves blocks over 128 KiB with fresh pages from the operating system and
returns them when they are freed. A training step allocates and frees its activations, some
hundred megabytes, so every step faults all of them in again, each page zeroed by the
kernel: 27,000 page faults a step on the d_model 256 Multi30k shape of
`python -m benchmarks.peers`, about 200 after `keep_freed_memory` (which raises the size
served from fresh pages to glibc's maximum, 32 MiB, and the free memory kept at the top of
the heap to 1 GiB). The training command calls it once at its start; the memory kept is
what the step's peak needed anyway.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks for reuse; False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already uses
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
