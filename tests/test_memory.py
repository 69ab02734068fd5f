"""keep_freed_memory: big blocks come from the heap, and the heap keeps them when freed."""

from __future__ import annotations

import subprocess
import sys

import pytest

# In a fresh process: how far the heap's end (the program break) moves, in MiB, when a
# 20 MiB tensor is allocated, and then when it is freed.
SNIPPET = """
import ctypes, sys, torch
from transformer.runtime.memory import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    raise SystemExit(3)
sbrk = ctypes.CDLL(None).sbrk
sbrk.restype = ctypes.c_void_p
start = sbrk(0)
block = torch.ones(5 << 20)  # 20 MiB
allocated = sbrk(0)
del block
print((allocated - start) >> 20, (sbrk(0) - allocated) >> 20)
"""


def heap_moves(mode: str) -> tuple[int, int]:
    done = subprocess.run([sys.executable, "-c", SNIPPET, mode], capture_output=True, text=True)
    if done.returncode == 3:
        pytest.skip("this C library has no mallopt (not glibc)")
    assert done.returncode == 0, done.stderr
    grown, shrunk = done.stdout.split()
    return int(grown), int(shrunk)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_freed_20_mib_block_stays_in_the_heap_for_the_next_step() -> None:
    assert heap_moves("default") == (0, 0)  # glibc maps it apart and unmaps it when freed
    grown, moved_when_freed = heap_moves("keep")
    assert grown >= 16 and moved_when_freed == 0  # (the heap may have had some room)
