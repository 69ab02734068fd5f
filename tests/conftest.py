"""Shared test setup: tiny models run fastest on one thread, and 2-core CI stays responsive."""

import logging
import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the subprocesses tests start
torch.set_num_threads(1)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and lose a lot on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Commands run in-process set up logging for their program: undo it after each test."""
    yield
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if type(handler).__module__.startswith("transformer") or isinstance(
            handler, logging.FileHandler
        ):
            root.removeHandler(handler)
            handler.close()
    logging.getLogger("transformer").setLevel(logging.NOTSET)
