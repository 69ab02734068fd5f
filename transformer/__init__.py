"""The Transformer of "Attention Is All You Need", written from scratch, for translation.

The public names are imported on first use, so that importing one part of the package
(the configs, or the command-line programs, which prepare the CPU threads before torch
starts) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "Config": "transformer.config",
    "ConfigError": "transformer.config",
    "DataConfig": "transformer.config",
    "DecoderCache": "transformer.model",
    "DecodingConfig": "transformer.config",
    "ModelConfig": "transformer.config",
    "MultiHeadAttention": "transformer.model",
    "TokenizerConfig": "transformer.config",
    "TrainingConfig": "transformer.config",
    "Transformer": "transformer.model",
    "load_config": "transformer.config",
    "resolve_device": "transformer.runtime.device",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """`transformer.Transformer` and the other public names, imported when first asked for."""
    if name not in _HOMES:
        raise AttributeError(f"module 'transformer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
