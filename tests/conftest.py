"""Shared test setup: tiny models run fastest on one thread, and 2-core CI stays responsive."""

import importlib
import logging
import os
import subprocess
from collections.abc import Callable, Iterator

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


@pytest.fixture(autouse=True)
def keep_thread_count() -> Iterator[None]:
    """The commands set torch's thread count for their process: give the tests theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture) -> Callable[..., subprocess.CompletedProcess]:
    """A command run in this process (its `main`): seconds faster than a new Python."""

    def call(program: str, *args: object) -> subprocess.CompletedProcess:
        main = importlib.import_module(f"transformer.cli.{program}").main
        capsys.readouterr()
        code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return call
