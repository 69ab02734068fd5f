"""scripts/benchmark_model.py compares our model with an nn.Transformer computing the same."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_model.py"


def load() -> object:
    spec = importlib.util.spec_from_file_location("benchmark_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_reference_model_computes_our_function_once_given_our_weights() -> None:
    benchmark = load()
    size = benchmark.Size(d_model=32, num_heads=4, d_ff=64, num_layers=2)
    torch.manual_seed(0)
    assert benchmark.check_same_function(size, vocab_size=50) < 1e-4
