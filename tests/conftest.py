"""Shared test setup: tiny models run fastest on one thread, and 2-core CI stays responsive."""

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the subprocesses tests start
torch.set_num_threads(1)
