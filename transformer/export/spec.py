"""Our Transformer's parameters laid out in CTranslate2's own model specification classes.

CTranslate2 (an optional dependency: ``pip install 'transformer[ctranslate2]'``) describes a
model as a tree of `ctranslate2.specs` objects whose attributes are the weights; its
`ModelSpec.save` writes the binary format. `transformer_spec` fills that tree from our model:

    ours                                      CTranslate2 (TransformerSpec)
    src_embed, tgt_embed (× √d_model)         encoder.embeddings[0], decoder.embeddings
                                              (scale_embeddings: × √d_model as well)
    sinusoidal table / learned vectors        encoder, decoder .position_encodings.encodings
    rope: pairs (2i, 2i+1), base 10000        self_attention rotary_dim 0 (all), interleaved
    self_attn.qkv_proj [W^Q; W^K; W^V], b     self_attention.linear[0]: the same fused layout
    cross_attn.qkv_proj W^Q rows | K, V rows  attention.linear[0] | attention.linear[1]
    out_proj W^O                              linear[-1]
    num_kv_heads                              num_heads_kv
    FeedForward linear1, linear2              ffn.linear_0, ffn.linear_1 (RELU, GELU)
    SwiGLU linear1 W_1, linear3 W_3, linear2  ffn.linear_0 (SWISH), linear_0_noact, linear_1
    AddNorm's norm, post or pre               each sublayer's layer_norm; pre_norm
    RMSNorm or LayerNorm (its eps)            rms_norm; config.layer_norm_epsilon
    final_norm (pre-norm only)                encoder.layer_norm, decoder.layer_norm
    output_proj, tied or not                  decoder.projection (equal arrays are aliased)

CTranslate2 adds its own sinusoidal encoding when no table is given, with another layout
than ours (sines then cosines, not interleaved), so our table is always written out.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from transformer.config import ModelConfig
from transformer.data.tokenizer import BOS_PIECE, EOS_PIECE, UNK_PIECE
from transformer.errors import UserError
from transformer.model import Transformer
from transformer.model.layers import FeedForward, RMSNorm, SwiGLUFeedForward
from transformer.model.positions import BASE, sinusoidal_table

EXTRA = "pip install 'transformer[ctranslate2]'"

# Every ModelConfig field this exporter knows how to represent; a field added to the model
# later is refused (when not at its default) until it is taught here.
KNOWN_MODEL_OPTIONS = frozenset(
    {
        "src_vocab_size",
        "tgt_vocab_size",
        "d_model",
        "num_heads",
        "num_kv_heads",
        "d_ff",
        "num_encoder_layers",
        "num_decoder_layers",
        "dropout",
        "attention_dropout",
        "activation",
        "norm_position",
        "norm",
        "positional_encoding",
        "max_positions",
        "tie_output_embeddings",
        "share_embeddings",
    }
)


class ExportError(UserError):
    """A model or an output that cannot be exported (the message names the option or file)."""


def import_ctranslate2() -> ModuleType:
    """The `ctranslate2` package, or an `ExportError` that says how to install it."""
    try:
        return importlib.import_module("ctranslate2")
    except ImportError:
        raise ExportError(
            f"the CTranslate2 engine needs the ctranslate2 package; install the extra: {EXTRA}"
        ) from None


def check_exportable(config: ModelConfig) -> None:
    """Raise an `ExportError` naming the first model option CTranslate2 cannot represent."""
    for field in dataclasses.fields(config):
        if field.name in KNOWN_MODEL_OPTIONS:
            continue
        value = getattr(config, field.name)
        default = field.default
        if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        if value != default:
            raise ExportError(
                f"model.{field.name}: {value!r} cannot be exported to CTranslate2 (this "
                "exporter does not know the option); train without it or extend "
                "transformer/export/spec.py"
            )


def transformer_spec(
    model: Transformer,
    source_pieces: list[str],
    target_pieces: list[str],
    target_positions: int,
) -> Any:
    """A `ctranslate2.specs.TransformerSpec` holding `model`'s weights (float32 copies).

    `source_pieces` and `target_pieces` are the vocabularies in id order. A sinusoidal
    decoder gets `target_positions` rows of encodings (the longest output it may write);
    the encoder gets `max_positions`, the most the model reads.
    """
    check_exportable(model.config)
    ct2 = import_ctranslate2()
    specs = ct2.specs
    c = model.config
    rope = c.positional_encoding == "rope"
    shape = _stack_options(ct2, c)
    encoder = specs.TransformerEncoderSpec(c.num_encoder_layers, c.num_heads, **shape)
    decoder = specs.TransformerDecoderSpec(c.num_decoder_layers, c.num_heads, **shape)
    spec = specs.TransformerSpec(encoder, decoder)

    encoder.embeddings[0].weight = _array(model.src_embed.embedding.weight)
    decoder.embeddings.weight = _array(model.tgt_embed.embedding.weight)
    if rope:  # no table: the rotations happen in self-attention
        del encoder.position_encodings
    else:
        encoder.position_encodings.encodings = _positions(model.encoder, c.max_positions)
        decoder.position_encodings.encodings = _positions(model.decoder, target_positions)
    for layer_spec, layer in zip(encoder.layer, model.encoder.layers, strict=True):
        _fill_self_attention(layer_spec.self_attention, layer.self_attn, layer.attn_sublayer.norm)
        _fill_feed_forward(layer_spec.ffn, layer.feed_forward, layer.ff_sublayer.norm)
    for layer_spec, layer in zip(decoder.layer, model.decoder.layers, strict=True):
        _fill_self_attention(
            layer_spec.self_attention, layer.self_attn, layer.self_attn_sublayer.norm
        )
        _fill_cross_attention(
            layer_spec.attention, layer.cross_attn, layer.cross_attn_sublayer.norm
        )
        _fill_feed_forward(layer_spec.ffn, layer.feed_forward, layer.ff_sublayer.norm)
    if model.encoder.final_norm is not None:
        _fill_norm(encoder.layer_norm, model.encoder.final_norm)
        _fill_norm(decoder.layer_norm, model.decoder.final_norm)
    decoder.projection.weight = _array(model.output_proj.weight)

    norm = model.encoder.layers[0].attn_sublayer.norm
    spec.config.layer_norm_epsilon = norm.eps
    spec.config.unk_token, spec.config.bos_token = UNK_PIECE, BOS_PIECE
    spec.config.eos_token, spec.config.decoder_start_token = EOS_PIECE, BOS_PIECE
    spec.config.add_source_eos = False  # the translator appends EOS itself, as ours
    spec.register_source_vocabulary(source_pieces)
    spec.register_target_vocabulary(target_pieces)
    return spec


def _stack_options(ct2: ModuleType, config: ModelConfig) -> dict[str, Any]:
    """The keyword arguments of CTranslate2's encoder and decoder specs for our options.

    Only the options the model uses are passed, so that a CTranslate2 too old for one of
    them is named: an `ExportError` names our model option and the argument it lacks.
    """
    c = config
    activation = ct2.specs.Activation
    chosen = {  # CTranslate2 argument: (value, our option)
        "pre_norm": (c.norm_position == "pre", "norm_position"),
        "activation": (
            {
                "relu": activation.RELU,
                "gelu": activation.GELU,
                "silu": activation.SWISH,
                "swiglu": activation.SWISH,
            }[c.activation],  # GELU is the exact (erf) one, as F.gelu; SWISH is SiLU
            "activation",
        ),
    }
    if c.activation == "swiglu":
        chosen["ffn_glu"] = (True, "activation")
    if c.norm == "rmsnorm":
        chosen["rms_norm"] = (True, "norm")
    if c.num_kv_heads not in (None, c.num_heads):
        chosen["num_heads_kv"] = (c.num_kv_heads, "num_kv_heads")
    if c.positional_encoding == "rope":
        chosen["rotary_dim"] = (0, "positional_encoding")  # 0: every feature of a head
        chosen["rotary_interleave"] = (True, "positional_encoding")  # pairs (2i, 2i+1)
        chosen["rotary_base"] = (BASE, "positional_encoding")
    for stack in (ct2.specs.TransformerEncoderSpec, ct2.specs.TransformerDecoderSpec):
        known = inspect.signature(stack.__init__).parameters  # the metaclass hides it
        for argument, (_, option) in chosen.items():
            if argument not in known:
                raise ExportError(
                    f"model.{option}: {getattr(c, option)} needs a newer CTranslate2 (the "
                    f"installed {ct2.__version__} has no {stack.__name__}({argument}=...)); "
                    "pip install -U ctranslate2"
                )
    return {argument: value for argument, (value, _) in chosen.items()}


def _array(tensor: Tensor) -> np.ndarray:
    """A float32 NumPy copy of a parameter, contiguous (CTranslate2 writes its bytes)."""
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())


def _positions(stack: nn.Module, rows: int) -> np.ndarray:
    """The first `rows` vectors a stack adds to its embeddings: (rows, D)."""
    positional = stack.positional
    if positional is None:
        raise ValueError("a model with additive positions has a positional module")
    if hasattr(positional, "embedding"):  # learned
        return _array(positional.embedding.weight[:rows])
    return _array(sinusoidal_table(torch.arange(rows), positional.d_model))


def _fill_norm(spec: Any, norm: nn.Module) -> None:
    """LayerNorm: gamma and beta; RMSNorm: gamma only."""
    spec.gamma = _array(norm.weight)
    if not isinstance(norm, RMSNorm):
        spec.beta = _array(norm.bias)


def _fill_linear(spec: Any, weight: Tensor, bias: Tensor | None) -> None:
    spec.weight = _array(weight)
    if bias is not None:
        spec.bias = _array(bias)


def _fill_self_attention(spec: Any, attention: nn.Module, norm: nn.Module) -> None:
    """The stacked [W^Q; W^K; W^V] is CTranslate2's fused self-attention projection."""
    _fill_norm(spec.layer_norm, norm)
    _fill_linear(spec.linear[0], attention.qkv_proj.weight, attention.qkv_proj.bias)
    _fill_linear(spec.linear[1], attention.out_proj.weight, attention.out_proj.bias)


def _fill_cross_attention(spec: Any, attention: nn.Module, norm: nn.Module) -> None:
    """Queries from the W^Q rows; keys and values from the W^K, W^V rows, fused."""
    D, kv = attention.spec.d_model, attention.spec.kv_dim
    w_q, w_kv = attention.qkv_proj.weight.split([D, 2 * kv])  # (D, D), (2 kv, D)
    b_q, b_kv = attention.qkv_proj.bias.split([D, 2 * kv])
    _fill_norm(spec.layer_norm, norm)
    _fill_linear(spec.linear[0], w_q, b_q)
    _fill_linear(spec.linear[1], w_kv, b_kv)
    _fill_linear(spec.linear[2], attention.out_proj.weight, attention.out_proj.bias)


def _fill_feed_forward(spec: Any, feed_forward: nn.Module, norm: nn.Module) -> None:
    """FFN(x) = act(x W_1 + b_1) W_2 + b_2, or (SiLU(x W_1) ⊙ x W_3) W_2 for SwiGLU."""
    _fill_norm(spec.layer_norm, norm)
    if isinstance(feed_forward, SwiGLUFeedForward):
        _fill_linear(spec.linear_0, feed_forward.linear1.weight, None)
        _fill_linear(spec.linear_0_noact, feed_forward.linear3.weight, None)
        _fill_linear(spec.linear_1, feed_forward.linear2.weight, None)
        return
    if not isinstance(feed_forward, FeedForward):
        raise TypeError(f"unknown feed-forward network {type(feed_forward).__name__}")
    _fill_linear(spec.linear_0, feed_forward.linear1.weight, feed_forward.linear1.bias)
    _fill_linear(spec.linear_1, feed_forward.linear2.weight, feed_forward.linear2.bias)
