"""benchmarks/model.py compares our model with an nn.Transformer computing the same."""

from __future__ import annotations

import torch

import benchmarks.model as benchmark


def test_the_reference_model_computes_our_function_once_given_our_weights() -> None:
    size = benchmark.Size(d_model=32, num_heads=4, d_ff=64, num_layers=2)
    torch.manual_seed(0)
    assert benchmark.check_same_function(size, vocab_size=50) < 1e-4
