"""Embeddings, feed-forward networks, normalisation, Add & Norm, encoder and decoder layers.

Shape legend: B batch, N decoder rows (B, or B x beams), S source length, T target length,
D d_model, V vocabulary.

Each layer is built from one `LayerSpec` (the model's numbers and switches); the projections
are `nn.Linear`, the dropouts `nn.Dropout` (`transformer.model.fast` may speed them up).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer.model.attention import AttentionRecorder, MultiHeadAttention
from transformer.model.cache import KVCache
from transformer.model.spec import LayerSpec

LayerCaches = tuple[KVCache, KVCache]  # a decoder layer's (self-attention, cross-attention) caches


class Embeddings(nn.Module):
    """Token embeddings multiplied by √d_model, as in section 3.4 of the paper."""

    def __init__(self, vocab_size: int, d_model: int, pad_id: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.scale = math.sqrt(d_model)
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)

    def forward(self, ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, D)."""
        return self.embedding(ids) * self.scale


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,  # max(0, z), the paper's
    "gelu": F.gelu,  # z · Φ(z), Φ the standard normal CDF (exact, not the tanh approximation)
    "silu": F.silu,  # z · sigmoid(z), "swish": Marian's (OPUS-MT) activation
}


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (GELU or SiLU instead of ReLU when chosen)."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
            )
        self.linear1 = nn.Linear(d_model, d_ff)  # W_1, b_1
        self.linear2 = nn.Linear(d_ff, d_model)  # W_2, b_2
        self.activation = ACTIVATIONS[activation]

    def hidden(self, x: Tensor) -> Tensor:
        """max(0, x W_1 + b_1): (B, T, D) -> (B, T, d_ff)."""
        return self.activation(self.linear1(x))

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, d_ff) -> (B, T, D)."""
        return self.linear2(self.hidden(x))


class SwiGLUFeedForward(nn.Module):
    """FFN(x) = (SiLU(x W_1) ⊙ x W_3) W_2, the gated feed-forward network of PaLM and LLaMA.

    x W_3 gates the SiLU-activated x W_1 feature by feature (SiLU(z) = z · sigmoid(z)); there
    are no biases. `d_ff` is the width of each of W_1 and W_3, so the network has 3·D·d_ff
    parameters where the paper's has 2·D·d_ff + d_ff + D: a d_ff of 2/3 of the ReLU
    network's keeps the size.
    """

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff, bias=False)  # W_1
        self.linear3 = nn.Linear(d_model, d_ff, bias=False)  # W_3, the gate
        self.linear2 = nn.Linear(d_ff, d_model, bias=False)  # W_2

    def hidden(self, x: Tensor) -> Tensor:
        """SiLU(x W_1) ⊙ x W_3: (B, T, D) -> (B, T, d_ff)."""
        return F.silu(self.linear1(x)) * self.linear3(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, d_ff) -> (B, T, D)."""
        return self.linear2(self.hidden(x))


def make_feed_forward(spec: LayerSpec) -> nn.Module:
    """The paper's feed-forward network (relu, gelu, silu), or the gated SwiGLU one (swiglu)."""
    if spec.activation == "swiglu":
        return SwiGLUFeedForward(spec.d_model, spec.d_ff)
    return FeedForward(spec.d_model, spec.d_ff, spec.activation)


class RMSNorm(nn.Module):
    """RMSNorm(x) = x / sqrt(mean(x²) + ε) · g: LayerNorm without the mean and the bias.

    Scaling each vector to a root mean square of 1 (then by a learned gain g) is what keeps
    the activations in range; RMSNorm skips LayerNorm's centring, a little cheaper.
    """

    def __init__(self, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))  # g

    def forward(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., D)."""
        rms = x.float().pow(2).mean(dim=-1, keepdim=True).add(self.eps).sqrt()  # (..., 1)
        return (x.float() / rms).to(x.dtype) * self.weight


def make_norm(kind: str, d_model: int) -> nn.Module:
    """LayerNorm (the paper's) or RMSNorm, over the last dimension of size d_model."""
    if kind == "layernorm":
        return nn.LayerNorm(d_model)
    if kind == "rmsnorm":
        return RMSNorm(d_model)
    raise ValueError(f"norm must be layernorm or rmsnorm, got {kind!r}")


class AddNorm(nn.Module):
    """Residual connection around a sublayer, with its normalisation (LayerNorm or RMSNorm).

    post-norm (the paper): LayerNorm(x + Dropout(Sublayer(x)));
    pre-norm:              x + Dropout(Sublayer(LayerNorm(x))).
    """

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.pre_norm = spec.norm_position == "pre"
        self.norm = make_norm(spec.norm, spec.d_model)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """One encoder layer: self-attention, then the feed-forward network, each with Add & Norm."""

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(spec)
        self.feed_forward = make_feed_forward(spec)
        self.attn_sublayer = AddNorm(spec)
        self.ff_sublayer = AddNorm(spec)

    def forward(
        self, x: Tensor, src_mask: Tensor | None, recorder: AttentionRecorder | None = None
    ) -> Tensor:
        """(B, S, D) with mask (B, 1, 1, S) -> (B, S, D); `recorder` keeps the attention weights."""
        x = self.attn_sublayer(
            x, lambda h: self.self_attn.self_attention(h, src_mask, recorder=recorder)
        )
        return self.ff_sublayer(x, self.feed_forward)


class DecoderLayer(nn.Module):
    """One decoder layer: masked self-attention, cross-attention over the encoder output, then
    the feed-forward network, each with Add & Norm.

    Cross-attention takes its queries from the decoder and its keys and values from the
    encoder output m (the memory):

        CrossAttention(y, m) = Concat(head_1, ..., head_h) W^O,
        head_i = softmax((y W_i^Q)(m W_i^K)ᵀ / √d_k) (m W_i^V)

    with y (N, T, D) and m (B, S, D): the weights are (N, H, T, S), each target position's
    view of the source. Rotary positions (if any) apply to the self-attention only:
    source and target positions are not comparable.
    """

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(spec)
        self.cross_attn = MultiHeadAttention(dataclasses.replace(spec, rope=False))  # unrotated
        self.feed_forward = make_feed_forward(spec)
        self.self_attn_sublayer = AddNorm(spec)
        self.cross_attn_sublayer = AddNorm(spec)
        self.ff_sublayer = AddNorm(spec)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        src_mask: Tensor | None,
        tgt_mask: Tensor | None,
        cache: LayerCaches | None = None,
        recorder: AttentionRecorder | None = None,
    ) -> Tensor:
        """(N, T, D) -> (N, T, D), attending to the encoder output `memory` (B, S, D).

        `tgt_mask` (T, T_all) keeps each position from seeing later ones; `src_mask`
        (B, 1, 1, S) hides source padding. `memory`'s rows may each serve N / B consecutive
        rows of `x` (the beams of a sentence). `cache` is this layer's (self, cross) pair of
        `KVCache`s for incremental decoding; `recorder` keeps the attention weights.
        """
        self_cache, cross_cache = cache if cache is not None else (None, None)
        x = self.self_attn_sublayer(
            x, lambda h: self.self_attn.self_attention(h, tgt_mask, self_cache, recorder)
        )
        x = self.cross_attn_sublayer(
            x,
            lambda h: self.cross_attn.cross_attention(h, memory, src_mask, cross_cache, recorder),
        )
        return self.ff_sublayer(x, self.feed_forward)
