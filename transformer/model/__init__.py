"""The Transformer model: attention, layers, the encoder-decoder and its decoding cache."""

from transformer.model.attention import (
    MultiHeadAttention,
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
from transformer.model.transformer import AttentionMaps, Decoder, Encoder, Transformer

__all__ = [
    "AddNorm",
    "AttentionMaps",
    "Decoder",
    "DecoderCache",
    "DecoderLayer",
    "Embeddings",
    "Encoder",
    "EncoderLayer",
    "FeedForward",
    "KVCache",
    "LearnedPositionalEncoding",
    "MultiHeadAttention",
    "RMSNorm",
    "RotaryPositionalEncoding",
    "SinusoidalPositionalEncoding",
    "SwiGLUFeedForward",
    "Transformer",
    "causal_mask",
    "padding_mask",
    "scaled_dot_product_attention",
]
