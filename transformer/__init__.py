"""The Transformer of "Attention Is All You Need", written from scratch, for translation."""

from transformer.config import (
    Config,
    ConfigError,
    DataConfig,
    DecodingConfig,
    ModelConfig,
    TokenizerConfig,
    TrainingConfig,
    load_config,
)
from transformer.device import resolve_device
from transformer.model import DecoderCache, MultiHeadAttention, Transformer

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "DecoderCache",
    "DecodingConfig",
    "ModelConfig",
    "MultiHeadAttention",
    "TokenizerConfig",
    "TrainingConfig",
    "Transformer",
    "load_config",
    "resolve_device",
]
