"""An exponential moving average (EMA) of the weights, kept beside the model being trained.

After each optimizer step that updated the weights θ::

    d_n   = min(decay, (1 + n) / (10 + n))     n: the updates before this one (warm-up)
    ema  <- d_n · ema + (1 - d_n) · θ           every floating-point parameter
    ema  <- θ                                   buffers (copied)

The warm-up keeps the first updates from being dominated by the random initial weights
(d_0 = 0.1, d_90 = 0.91, then `decay`), as TensorFlow's ExponentialMovingAverage with
num_updates does. The average is what validation measures and what checkpoints offer to
translation (see `transformer.training.trainer.Trainer.state_dict`); training goes on with θ.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn


def warmed_up_decay(decay: float, updates: int) -> float:
    """The decay of update number `updates` (0-based): min(decay, (1 + n) / (10 + n))."""
    return min(decay, (1 + updates) / (10 + updates))


class WeightAverage:
    """The EMA of a model's state: `update` after each optimizer step, `applied` to use it.

    Its state is the model's `state_dict()` layout: the same keys, and tensors that share
    storage in the model (tied embeddings) share it here too, so that a checkpoint holding
    `state_dict()` loads wherever the model's own state dict does.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1) (got {decay})")
        self.decay = decay
        self.updates = 0
        parameters = {id(p) for p in model.parameters()}
        state = model.state_dict(keep_vars=True)
        self._owner: dict[str, str] = {}  # key -> the first key holding the same tensor
        first: dict[int, str] = {}
        for key, tensor in state.items():
            self._owner[key] = first.setdefault(id(tensor), key)
        self._average = {  # one copy per distinct tensor
            key: state[key].detach().clone() for key in dict.fromkeys(self._owner.values())
        }
        self._floating = [  # the parameters averaged; buffers and the rest are copied
            key
            for key in self._average
            if id(state[key]) in parameters and state[key].is_floating_point()
        ]
        self._copied = [key for key in self._average if key not in set(self._floating)]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average in the model's current weights (call after each optimizer step)."""
        state = model.state_dict()
        weight = 1.0 - warmed_up_decay(self.decay, self.updates)
        averages = [self._average[key] for key in self._floating]
        # ema + w (θ - ema) = (1 - w) ema + w θ, in one fused kernel per device
        torch._foreach_lerp_(averages, [state[key] for key in self._floating], weight)
        for key in self._copied:
            self._average[key].copy_(state[key])
        self.updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights, laid out as the model's `state_dict()`."""
        return {key: self._average[owner] for key, owner in self._owner.items()}

    def load_state_dict(self, state: dict[str, Tensor], updates: int) -> None:
        """Restore the averaged weights (as `state_dict` gave them) and the update count."""
        for key, owner in self._owner.items():
            if key == owner:
                self._average[key].copy_(state[key])
        self.updates = updates

    def extra_state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the weights: the decay and the update count."""
        return {"decay": self.decay, "updates": self.updates}

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Within the block the model holds the averaged weights; its own come back after."""
        own = {key: tensor.clone() for key, tensor in model.state_dict().items()}
        model.load_state_dict(self.state_dict())
        try:
            yield
        finally:
            model.load_state_dict(own)
