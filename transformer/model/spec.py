"""What an encoder or decoder layer is made of: one small typed spec, read from the config once.

The paper's numbers (d_model, h, d_ff, P_drop) and the switches of later models (pre-norm,
RMSNorm, GELU or SwiGLU, grouped-query attention, rotary positions). `d_k`, the width of one
head, is derived here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformer.config import ModelConfig


@dataclass(frozen=True)
class LayerSpec:
    """The shape of one layer: `EncoderLayer(spec)`, `DecoderLayer(spec)`,
    `MultiHeadAttention(spec)` can each be built and tested alone."""

    d_model: int
    num_heads: int
    d_ff: int
    dropout: float = 0.1  # P_drop: sublayer outputs, before Add & Norm
    attention_dropout: float = 0.0  # on the attention weights
    activation: str = "relu"  # relu (the paper), gelu, silu or swiglu
    norm_position: str = "post"  # post (the paper) or pre
    norm: str = "layernorm"  # layernorm (the paper) or rmsnorm
    num_kv_heads: int | None = None  # K/V heads (grouped-query attention); None: num_heads
    rope: bool = False  # rotate self-attention's queries and keys by their positions

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.kv_heads})"
            )
        for name, value, choices in (
            ("activation", self.activation, ("relu", "gelu", "silu", "swiglu")),
            ("norm_position", self.norm_position, ("post", "pre")),
            ("norm", self.norm, ("layernorm", "rmsnorm")),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if self.rope and self.d_k % 2:
            raise ValueError(
                f"rotary positions rotate pairs of features: d_k must be even ({self.d_k})"
            )

    @property
    def d_k(self) -> int:
        """Width of one attention head: d_model / num_heads."""
        return self.d_model // self.num_heads

    @property
    def kv_heads(self) -> int:
        """Heads of keys and values: num_heads, or fewer shared in groups (grouped-query)."""
        return self.num_kv_heads or self.num_heads

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V): kv_heads · d_k, which is d_model unless grouped."""
        return self.kv_heads * self.d_k

    @classmethod
    def from_config(cls, config: ModelConfig) -> LayerSpec:
        """The layers of the model `config` describes (every layer of both stacks alike)."""
        return cls(
            d_model=config.d_model,
            num_heads=config.num_heads,
            d_ff=config.d_ff,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            activation=config.activation,
            norm_position=config.norm_position,
            norm=config.norm,
            num_kv_heads=config.num_kv_heads,
            rope=config.positional_encoding == "rope",
        )
