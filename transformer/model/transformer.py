"""Encoder, Decoder and the encoder-decoder Transformer built from a `ModelConfig`.

Shape legend: B batch (source sentences), N decoder rows (B, or B x beams), S source length,
T target length, D d_model, H heads, L layers, V target vocabulary.

`Transformer(config)` is the paper's model, in PyTorch's plain layers; `build_model(config)`
is the same model with the fast paths of `transformer.model.fast` installed (`fast=False`:
without them). Both hold the same parameters under the same names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from transformer.config import ModelConfig
from transformer.data.special_ids import PAD_ID, SpecialIds
from transformer.model.attention import (
    AttentionRecorder,
    MultiHeadAttention,
    causal_mask,
    padding_mask,
)
from transformer.model.cache import DecoderCache
from transformer.model.fast import install_fast_paths
from transformer.model.layers import DecoderLayer, Embeddings, EncoderLayer, make_norm
from transformer.model.positions import LearnedPositionalEncoding, SinusoidalPositionalEncoding
from transformer.model.spec import LayerSpec


def make_positional_encoding(
    kind: str, d_model: int, max_positions: int, layout: str = "interleaved"
) -> nn.Module | None:
    """The encoding added to the embeddings: sinusoidal (its sines and cosines in `layout`),
    learned, or None for rope (whose rotations happen inside each self-attention)."""
    if kind == "sinusoidal":
        return SinusoidalPositionalEncoding(d_model, layout=layout)
    if kind == "learned":
        return LearnedPositionalEncoding(d_model, max_positions)
    if kind == "rope":
        return None
    raise ValueError(f"positional encoding must be sinusoidal, learned or rope, got {kind!r}")


class Encoder(nn.Module):
    """Positions + dropout, then N encoder layers (and a final norm when pre-norm)."""

    def __init__(
        self,
        layers: list[EncoderLayer],
        positional: nn.Module | None,
        dropout: float,
        final_norm: nn.Module | None,
    ) -> None:
        super().__init__()
        self.positional = positional
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm

    def forward(
        self, x: Tensor, src_mask: Tensor | None, recorder: AttentionRecorder | None = None
    ) -> Tensor:
        """Embedded source (B, S, D), mask (B, 1, 1, S) -> memory (B, S, D).

        A `recorder` keeps each layer's self-attention weights (B, H, S, S).
        """
        if self.positional is not None:
            x = self.positional(x)
        x = self.dropout(x)
        for layer in self.layers:
            x = layer(x, src_mask, recorder)
        return x if self.final_norm is None else self.final_norm(x)


class Decoder(nn.Module):
    """Positions + dropout, then N decoder layers (and a final norm when pre-norm)."""

    def __init__(
        self,
        layers: list[DecoderLayer],
        positional: nn.Module | None,
        dropout: float,
        final_norm: nn.Module | None,
    ) -> None:
        super().__init__()
        self.positional = positional
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        src_mask: Tensor | None,
        cache: DecoderCache | None = None,
        recorder: AttentionRecorder | None = None,
    ) -> Tensor:
        """Embedded target (N, T, D), memory (B, S, D) -> (N, T, D).

        With a cache, `x` holds only the new positions; they are placed after the cached ones,
        and the source (keys, values, mask) comes from the cache once it holds it. A
        `recorder` keeps each layer's self-attention (N, H, T, T_all) and cross-attention
        (N, H, T, S) weights.
        """
        cached = 0 if cache is None else cache.length
        T = x.size(1)
        if cache is not None:
            if cache.holds_source:
                src_mask = cache.source_mask
            else:
                cache.keep_source_mask(src_mask)
        if self.positional is not None:
            x = self.positional(x, 0 if cache is None else cache.next_position)
        x = self.dropout(x)
        # One new position may attend every earlier one: no mask needed.
        tgt_mask = None if T == 1 else causal_mask(T, cached + T, x.device)  # (T, cached + T)
        slots = None if cache is None else cache.key_mask(T)  # (N, 1, 1, cached + T) or None
        if slots is not None:  # rows that joined a decode under way skip the slots before them
            tgt_mask = slots if tgt_mask is None else slots & tgt_mask
        for i, layer in enumerate(self.layers):
            caches = None if cache is None else (cache.self_attn[i], cache.cross_attn[i])
            x = layer(x, memory, src_mask, tgt_mask, caches, recorder)
        return x if self.final_norm is None else self.final_norm(x)


@dataclass
class AttentionMaps:
    """Every attention weight of the model for one batch (the written-out formula's).

    encoder_self (L_enc, B, H, S, S): source position i attending source position j;
    decoder_self (L_dec, B, H, T, T): target position t attending the decoder inputs up to t
        (zero above the diagonal);
    cross (L_dec, B, H, T, S): target position t attending the source.
    Each row sums to 1 over the keys it may attend (padding keys get 0).
    """

    encoder_self: Tensor
    decoder_self: Tensor
    cross: Tensor


class Transformer(nn.Module):
    """The encoder-decoder Transformer of "Attention Is All You Need".

    `encode` runs the encoder once; `decode` maps target prefixes to next-token logits and,
    given a `DecoderCache`, runs incrementally; `forward` is both, for training.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.src_vocab_size is None or config.tgt_vocab_size is None:
            raise ValueError("ModelConfig needs src_vocab_size and tgt_vocab_size to build a model")
        self.config = config
        c = config
        self.src_embed = Embeddings(c.src_vocab_size, c.d_model, PAD_ID)
        self.tgt_embed = (
            self.src_embed
            if c.share_embeddings
            else Embeddings(c.tgt_vocab_size, c.d_model, PAD_ID)
        )
        spec = LayerSpec.from_config(c)
        self.encoder = Encoder(
            [EncoderLayer(spec) for _ in range(c.num_encoder_layers)],
            make_positional_encoding(
                c.positional_encoding, c.d_model, c.max_positions, c.positional_layout
            ),
            c.dropout,
            make_norm(c.norm, c.d_model) if c.norm_position == "pre" else None,
        )
        self.decoder = Decoder(
            [DecoderLayer(spec) for _ in range(c.num_decoder_layers)],
            make_positional_encoding(
                c.positional_encoding, c.d_model, c.max_positions, c.positional_layout
            ),
            c.dropout,
            make_norm(c.norm, c.d_model) if c.norm_position == "pre" else None,
        )
        # W_out, and b_out when `output_bias` (Marian's final_logits_bias): h W_outᵀ + b_out
        self.output_proj = nn.Linear(c.d_model, c.tgt_vocab_size, bias=c.output_bias)
        self.reset_parameters()
        if c.tie_output_embeddings:
            self.output_proj.weight = self.tgt_embed.embedding.weight

    def reset_parameters(self) -> None:
        """Xavier-uniform matrices, zero biases, N(0, d_model^-0.5) embeddings (pad row zero).

        W^Q, W^K and W^V are each initialised as the matrix they are, not as parts of the
        stacked `qkv_proj`.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=self.config.d_model**-0.5)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
        for module in self.modules():
            if isinstance(module, MultiHeadAttention):
                sizes = [module.spec.d_model, module.spec.kv_dim, module.spec.kv_dim]
                for projection in module.qkv_proj.weight.data.split(sizes):  # W^Q, W^K, W^V
                    nn.init.xavier_uniform_(projection)

    @property
    def special_ids(self) -> SpecialIds:
        """Padding, start and end-of-sentence ids: the tokenizer's, fixed for every model.

        The decoder's first input is BOS, or PAD when `decoder_start` is pad (Marian's models
        were trained that way)."""
        if self.config.decoder_start == "pad":
            return SpecialIds(bos=PAD_ID)
        return SpecialIds()

    @property
    def max_target_positions(self) -> int | None:
        """The most target positions the decoder can read (None: any number).

        Learned positions stop at `max_positions`; sinusoidal ones go on for ever.
        """
        learned = self.config.positional_encoding == "learned"
        return self.config.max_positions if learned else None

    def new_cache(self) -> DecoderCache:
        """An empty cache for incremental decoding with `decode`."""
        return DecoderCache(len(self.decoder.layers))

    def source_cache(
        self, memory: Tensor, src_mask: Tensor, rows_per_source: int = 1
    ) -> DecoderCache:
        """A cache for decoding `rows_per_source` rows (beams) of each source from scratch:
        the cross-attention keys and values of the encoder output (B, S, D) and its mask,
        and no target position yet. What continuous batching `join`s to a decode under way.
        """
        cache = self.new_cache()
        cache.keep_source_mask(src_mask)
        B = memory.size(0)
        for layer, self_cache, cross_cache in zip(
            self.decoder.layers, cache.self_attn, cache.cross_attn, strict=True
        ):
            cross_cache.keep(*layer.cross_attn.project_memory(memory))  # (B, H_kv, S, d_k)
            spec = layer.cross_attn.spec
            empty = memory.new_zeros(B * rows_per_source, spec.kv_heads, 0, spec.d_k)
            self_cache.append(empty, empty)  # (N, H_kv, 0, d_k): the rows, no position yet
        return cache

    def source_mask(self, src: Tensor) -> Tensor:
        """Padding mask of source ids: (B, S) -> (B, 1, 1, S)."""
        return padding_mask(src, PAD_ID)

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Source ids (B, S) -> memory (B, S, D): the encoder's representation of the source."""
        _check_ids("source", src)
        if src_mask is None:
            src_mask = self.source_mask(src)
        return self.encoder(_embed("source", self.src_embed, src), src_mask)

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor | None,
        src_mask: Tensor | None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """Target ids (N, T) and memory (B, S, D) -> next-token logits (N, T, V).

        Logit t scores every word as y_{t+1}: P(y_{t+1} | y_≤t, x) = softmax(h_t W_outᵀ), where
        h_t (D,) is the decoder's output at position t and W_out (V, D) the output projection
        (the target embedding matrix when tied). N may be a multiple of B: the N / B
        consecutive rows of `tgt` after row b·N/B read source b (the beams of a sentence).

        With a cache, `tgt` holds only the positions not decoded yet (usually one); the first
        call keeps the source in the cache, and later calls do not read `memory` and
        `src_mask` (they may be None).
        """
        return self.output_proj(self.decoder_states(tgt, memory, src_mask, cache))  # h W_outᵀ

    def decoder_states(
        self,
        tgt: Tensor,
        memory: Tensor | None,
        src_mask: Tensor | None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """What `decode` projects to logits: target ids (N, T) -> h (N, T, D)."""
        _check_ids("target", tgt)
        if cache is None or not cache.holds_source:
            if memory is None:
                raise ValueError("decode needs the encoder output (memory) at the first step")
            if tgt.size(0) % memory.size(0):
                raise ValueError(
                    f"batch sizes differ: target has {tgt.size(0)} rows, encoder output "
                    f"{memory.size(0)} (the target rows must be a multiple of the source rows)"
                )
        return self.decoder(
            _embed("target", self.tgt_embed, tgt), memory, src_mask, cache
        )  # (N, T, D)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Teacher forcing: source (B, S) and shifted target (B, T) ids -> logits (B, T, V)."""
        return self.output_proj(self.teacher_forced_states(src, tgt))  # h W_outᵀ

    def teacher_forced_states(self, src: Tensor, tgt: Tensor) -> Tensor:
        """`forward` up to the output projection: -> h (B, T, D). The training loss projects h
        itself (`transformer.training.loss.projected_label_smoothed_loss`)."""
        _check_ids("source", src)  # before its batch size is read
        if tgt.dim() == 2 and src.size(0) != tgt.size(0):
            raise ValueError(
                f"batch sizes differ: source has {src.size(0)} sentences, target {tgt.size(0)}"
            )
        src_mask = self.source_mask(src)
        memory = self.encoder(
            _embed("source", self.src_embed, src), src_mask
        )  # encode(), ids checked above
        return self.decoder_states(tgt, memory, src_mask)

    def attention_maps(self, src: Tensor, tgt: Tensor) -> AttentionMaps:
        """Every attention's weights when the model reads source (B, S) and target (B, T) ids.

        `tgt` is the decoder's input, BOS first: a reference translation (teacher forcing) or
        a search's output (the same weights the search computed step by step).
        """
        _check_ids("source", src)
        _check_ids("target", tgt)
        recorder = AttentionRecorder()
        src_mask = self.source_mask(src)
        memory = self.encoder(_embed("source", self.src_embed, src), src_mask, recorder)
        self.decoder(_embed("target", self.tgt_embed, tgt), memory, src_mask, None, recorder)
        encoder, decoder = self.encoder.layers, self.decoder.layers
        return AttentionMaps(
            encoder_self=torch.stack([recorder[layer.self_attn] for layer in encoder]),
            decoder_self=torch.stack([recorder[layer.self_attn] for layer in decoder]),
            cross=torch.stack([recorder[layer.cross_attn] for layer in decoder]),
        )

    def num_parameters(self) -> int:
        """Trainable parameters, each tied tensor counted once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def build_model(config: ModelConfig, fast: bool = True) -> Transformer:
    """The model of `config`, with the fast paths of `transformer.model.fast` installed unless
    `fast` is False (the paper's model as written: the same parameters, the same numbers)."""
    model = Transformer(config)
    return install_fast_paths(model) if fast else model


def _check_ids(name: str, ids: Tensor) -> None:
    """Fail early, and readably, on ids that are not a (batch, length) integer tensor."""
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} ids must be an integer tensor (int64), got {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"{name} ids must have shape (batch, length), got {tuple(ids.shape)}")


def _embed(name: str, embeddings: Embeddings, ids: Tensor) -> Tensor:
    """embeddings(ids): (B, T) -> (B, T, D), with a readable error for ids outside the
    vocabulary. The lookup checks the ids itself (raising on a CPU, asserting on an
    accelerator's device, where a check here would make the host wait for the device)."""
    try:
        return embeddings(ids)
    except IndexError:
        low, high = int(ids.min()), int(ids.max())
        raise ValueError(
            f"{name} ids must lie in [0, {embeddings.vocab_size}); got values from {low} to {high}"
        ) from None
