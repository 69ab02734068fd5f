"""The thread policy of training: one torch thread per core that other programs leave free."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from transformer.cli import train as train_cli
from transformer.runtime.threads import busy_cores, threads_for


@pytest.mark.parametrize(
    ("cores", "busy", "wanted", "threads"),
    [
        (2, 0.0, 2, 2),  # a quiet machine: every core
        (2, 0.3, 2, 2),  # a little background work is not a busy core
        (2, 1.0, 2, 1),  # one core busy elsewhere: one thread, not two fighting for one core
        (2, 2.0, 2, 1),  # never fewer than one
        (8, 3.2, 8, 5),
        (8, 0.0, 4, 4),  # never more than asked for
    ],
)
def test_one_thread_per_free_core(cores: int, busy: float, wanted: int, threads: int) -> None:
    assert threads_for(cores, busy, wanted) == threads


def test_busy_cores_is_a_share_of_the_machine() -> None:
    busy = busy_cores(0.05)
    if busy is None:
        pytest.skip("no /proc/stat here")
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6


def test_training_drops_to_the_free_cores_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("transformer.runtime.threads.busy_cores", lambda: 1.0)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    torch.set_num_threads(2)
    with caplog.at_level(logging.INFO, logger="transformer"):
        train_cli.set_threads("train", torch.device("cpu"))
    assert torch.get_num_threads() == 1
    assert "training on 1 thread(s), not 2" in caplog.text


def test_a_thread_count_the_user_chose_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr("transformer.runtime.threads.busy_cores", lambda: 2.0)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    torch.set_num_threads(2)
    train_cli.set_threads("train", torch.device("cpu"))
    assert torch.get_num_threads() == 2
