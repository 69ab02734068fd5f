"""The Transformer model: attention, layers, the encoder-decoder and its decoding cache.

`Transformer(config)` is the paper's model as written; `build_model(config)` installs the
fast paths of `transformer.model.fast` in it (`fast=False`: not).
"""

from transformer.model.attention import (
    AttentionRecorder,
    MultiHeadAttention,
    ScaledDotProductAttention,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
)
from transformer.model.cache import DecoderCache, KVCache
from transformer.model.layers import (
    AddNorm,
    DecoderLayer,
    Embeddings,
    EncoderLayer,
    FeedForward,
    RMSNorm,
    SwiGLUFeedForward,
)
from transformer.model.positions import (
    LearnedPositionalEncoding,
    RotaryPositionalEncoding,
    SinusoidalPositionalEncoding,
)
from transformer.model.spec import LayerSpec
from transformer.model.transformer import (
    AttentionMaps,
    Decoder,
    Encoder,
    Transformer,
    build_model,
)

__all__ = [
    "AddNorm",
    "AttentionMaps",
    "AttentionRecorder",
    "Decoder",
    "DecoderCache",
    "DecoderLayer",
    "Embeddings",
    "Encoder",
    "EncoderLayer",
    "FeedForward",
    "KVCache",
    "LayerSpec",
    "LearnedPositionalEncoding",
    "MultiHeadAttention",
    "RMSNorm",
    "RotaryPositionalEncoding",
    "ScaledDotProductAttention",
    "SinusoidalPositionalEncoding",
    "SwiGLUFeedForward",
    "Transformer",
    "build_model",
    "causal_mask",
    "padding_mask",
    "scaled_dot_product_attention",
]
