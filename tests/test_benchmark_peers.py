"""benchmarks/peers.py: our model and MarianMTModel get the same shape and batches."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import benchmarks.peers as peers

ROOT = Path(__file__).resolve().parents[1]


def test_a_padded_batch_shifts_the_target_behind_bos() -> None:
    src, tgt_in, tgt_out = peers.padded_batch([[5, 6, 3], [7, 3]], [[8, 9, 3], [10, 3]])
    assert src.tolist() == [[5, 6, 3], [7, 3, 0]]
    assert tgt_out.tolist() == [[8, 9, 3], [10, 3, 0]]
    assert tgt_in.tolist() == [[2, 8, 9], [2, 10, 0]]


def test_both_models_start_near_the_uniform_loss_and_have_the_same_trainable_parameters():
    pytest.importorskip("transformers")
    ours, marian = peers.our_model(), peers.marian_model()
    objective = peers.TranslationLoss(ours, peers.LABEL_SMOOTHING, peers.PAD_ID)
    src, tgt_in, tgt_out = peers.padded_batch([[5, 6, 3]], [[8, 9, 3]])
    uniform = 3 * math.log(peers.VOCAB)  # three target tokens, each at −log(1/V)
    with torch.no_grad():
        for impl, model in (("ours", objective.eval()), ("marian", marian.eval())):
            loss = peers.summed_loss(impl, model, src, tgt_in, tgt_out)
            assert loss.dtype == torch.float32 and abs(loss.item() / uniform - 1) < 0.25, impl
    count = lambda model: sum(p.numel() for p in model.parameters() if p.requires_grad)  # noqa: E731
    assert count(ours) == count(marian)  # Marian's sinusoidal positions are frozen, as ours


@pytest.mark.slow
def test_the_script_prints_its_table_and_the_ratio_line() -> None:
    pytest.importorskip("transformers")
    command = [sys.executable, "-m", "benchmarks.peers", "--steps", "1", "--warmup", "0",
               "--rounds", "1", "--sentences", "64"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("training ours/MarianMT: ")
