"""Follow one sentence through a trained model: every stage's shape, a few values, each attention.

`explain` translates a sentence as the translator does, then walks the encoder with the
model's own parts (embedding, positional encoding, each layer's projections, the written-out
attention formula, Add & Norm, the feed-forward network) and decodes the translation again
step by step with the cache, recording what each stage computed: an `Explanation`. The walk
is checked against the model's own forward pass, so the trace cannot drift from what the
model does.

Shape legend: S source pieces (EOS included), T decoder positions, D d_model, H heads,
d_k = D / H, V target vocabulary, L layers.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from transformer.config import DecodingConfig
from transformer.data.special_ids import BOS_ID, EOS_ID
from transformer.data.tokenizer import BOS_PIECE, EOS_PIECE, Tokenizer
from transformer.decoding.search import search
from transformer.decoding.translator import Translator
from transformer.errors import UserError
from transformer.model import AttentionMaps, AttentionRecorder, MultiHeadAttention, Transformer
from transformer.model.attention import attention_scores, scaled_dot_product_attention
from transformer.model.layers import AddNorm, FeedForward, RMSNorm, SwiGLUFeedForward

TOP_ALTERNATIVES = 5
_DIGITS = 5  # attention weights in the JSON: enough to draw, small enough to read


class ExplainError(UserError):
    """A sentence that cannot be explained (e.g. one without any piece)."""


@dataclass(frozen=True)
class Stage:
    """One line of the trace: what was computed, its shape, and a note (formula, values)."""

    name: str
    shape: tuple[int, ...] | None = None
    note: str = ""
    depth: int = 0  # 0: a part of the model, 1: a step in it, 2: a detail of the step


@dataclass
class Explanation:
    """A sentence's translation, its path through the model, and every attention weight.

    `target_pieces[t]` is what decoder position t produced (EOS last if the output ended);
    `decoder_input_pieces[t]` is what it read (BOS, then the output shifted by one). The
    maps have B = 1: encoder_self (L_enc, 1, H, S, S), decoder_self (L_dec, 1, H, T, T),
    cross (L_dec, 1, H, T, S).
    """

    source: str
    translation: str
    score: float
    source_pieces: list[str]
    decoder_input_pieces: list[str]
    target_pieces: list[str]
    maps: AttentionMaps
    stages: list[Stage] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The JSON of `attention.json`: the pieces, and nested lists [layer][head][query][key]."""
        return {
            "source": self.source,
            "translation": self.translation,
            "score": round(self.score, 4),
            "source_pieces": self.source_pieces,
            "target_pieces": self.target_pieces,
            "decoder_input_pieces": self.decoder_input_pieces,
            "encoder_self": _nested(self.maps.encoder_self[:, 0]),
            "decoder_self": _nested(self.maps.decoder_self[:, 0]),
            "cross": _nested(self.maps.cross[:, 0]),
        }


def _nested(weights: Tensor) -> list[Any]:
    """(L, H, Tq, Tk) -> nested lists of floats rounded to `_DIGITS` decimals."""
    return (
        weights.double().mul(10**_DIGITS).round().div(10**_DIGITS).tolist()
    )  # 0.03229, not 0.032290000468


@torch.inference_mode()
def explain(
    translator: Translator, text: str, decoding: DecodingConfig | None = None
) -> Explanation:
    """Translate `text` with `translator`'s model and record how the model got there."""
    model = translator.model
    ids = translator.source_ids(text)
    if not ids:
        raise ExplainError('nothing to explain: the text has no words (give --text "...")')
    decoding = decoding or translator.config.decoding
    src = torch.tensor([ids], device=translator.device)  # (1, S)
    best = search(model, src, decoding)[0][0]
    produced = [*best.tokens, *([EOS_ID] if best.ended else [])]  # what positions 0..T-1 predict
    tgt_in = torch.tensor(
        [[translator.model.special_ids.bos, *produced[:-1]]], device=translator.device
    )  # (1, T)

    target_tokenizer = translator.tokenizers.tgt
    pieces = _Pieces(
        source=_pieces(translator.tokenizers.src, ids),
        decoder_input=_pieces(target_tokenizer, tgt_in[0].tolist()),
        target=_pieces(target_tokenizer, produced),
        tokenizer=target_tokenizer,
    )
    trace = _Trace()
    src_mask = model.source_mask(src)  # (1, 1, 1, S)
    memory = _walk_encoder(model, src, src_mask, pieces.source, trace)
    search_name = "greedy search" if decoding.beam_size == 1 else f"beam {decoding.beam_size}"
    _walk_decoder(model, memory, src_mask, tgt_in, produced, pieces, trace, search_name)
    return Explanation(
        source=text,
        translation=target_tokenizer.decode(best.tokens),
        score=float(best.score),
        source_pieces=pieces.source,
        decoder_input_pieces=pieces.decoder_input,
        target_pieces=pieces.target,
        maps=model.attention_maps(src, tgt_in),
        stages=trace.stages,
    )


@dataclass
class _Pieces:
    """The pieces of the source, of the decoder's inputs and of its outputs."""

    source: list[str]
    decoder_input: list[str]
    target: list[str]
    tokenizer: Tokenizer

    def target_piece(self, piece_id: int) -> str:
        """The target piece of one id (BOS and EOS by their names)."""
        return _pieces(self.tokenizer, [piece_id])[0]


def _pieces(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    special = {BOS_ID: BOS_PIECE, EOS_ID: EOS_PIECE}
    return [special.get(i) or tokenizer.id_to_piece(i) for i in ids]


def _values(x: Tensor, count: int = 4) -> str:
    """The first `count` values of a tensor, for a glimpse of the numbers."""
    values = ", ".join(f"{v:+.3f}" for v in x.flatten()[:count].float().tolist())
    return f"[{values}, ...]"


def _looks_at(weights: Tensor, query_pieces: list[str], key_pieces: list[str]) -> str:
    """For each query (row of weights (Tq, Tk)), the key it attends most, and how much."""
    best_weight, best_key = weights.float().max(dim=-1)
    pairs = zip(query_pieces, best_key.tolist(), best_weight.tolist(), strict=True)
    return ", ".join(f"{q}→{key_pieces[k]} {w:.2f}" for q, k, w in pairs)


class _Trace:
    """Collects stages: `trace(name, tensor, note, depth)` records the tensor's shape."""

    def __init__(self) -> None:
        self.stages: list[Stage] = []

    def __call__(
        self, name: str, tensor: Tensor | None = None, note: str = "", depth: int = 2
    ) -> None:
        shape = None if tensor is None else tuple(tensor.shape)
        self.stages.append(Stage(name, shape, note, depth))


def _walk_encoder(
    model: Transformer, src: Tensor, src_mask: Tensor, pieces: list[str], trace: _Trace
) -> Tensor:
    """Run the encoder part by part, recording each stage; returns the memory (1, S, D)."""
    encoder = model.encoder
    trace("Encoder: reads the source all at once", depth=0)
    trace("pieces", None, " ".join(pieces), depth=1)
    trace("ids", src, str(src[0].tolist()), depth=1)
    x = model.src_embed(src)  # (1, S, D)
    root = math.sqrt(x.size(-1))
    trace("embeddings × √d_model", x, f"√{x.size(-1)} = {root:.2f}; {_values(x[0, 0])}", 1)
    if encoder.positional is None:  # rope: the positions rotate Q and K in each self-attention
        note = "rotary positions turn Q and K in each self-attention"
        trace("(no positions added)", None, note, depth=1)
    else:
        x = encoder.positional(x)  # (1, S, D)
        trace("+ positional encoding", x, _values(x[0, 0]), depth=1)
    x = encoder.dropout(x)
    for number, layer in enumerate(encoder.layers, start=1):
        trace(f"encoder layer {number}", depth=1)
        x = layer.attn_sublayer(
            x,
            lambda h, attn=layer.self_attn: _walk_attention(attn, h, src_mask, pieces, trace),
        )
        trace("Add & Norm", x, _add_norm_formula(layer.attn_sublayer))
        x = layer.ff_sublayer(x, lambda h, ff=layer.feed_forward: _walk_feed_forward(ff, h, trace))
        trace("Add & Norm", x, _add_norm_formula(layer.ff_sublayer))
    if encoder.final_norm is not None:
        x = encoder.final_norm(x)
        trace(f"final {type(encoder.final_norm).__name__} (pre-norm)", x, depth=1)
    trace("memory: the encoder output, read by every decoder layer", x, _values(x[0, 0]), 1)
    _check_same("the encoder walk", x, model.encode(src, src_mask))
    return x


def _add_norm_formula(add_norm: AddNorm) -> str:
    norm = "RMSNorm" if isinstance(add_norm.norm, RMSNorm) else "LayerNorm"
    if add_norm.pre_norm:
        return f"x + Dropout(Sublayer({norm}(x)))"
    return f"{norm}(x + Dropout(Sublayer(x)))"


def _walk_attention(
    attn: MultiHeadAttention, x: Tensor, mask: Tensor | None, pieces: list[str], trace: _Trace
) -> Tensor:
    """One multi-head self-attention over x (1, S, D), by the written-out formula, recorded."""
    spec = attn.spec
    q, k, v = attn.project_self(x)  # (1, H, S, d_k), (1, H_kv, S, d_k) x 2
    d_k = f"(B, H, S, d_k), d_k = D / H = {spec.d_k}"
    if spec.kv_heads != spec.num_heads:
        d_k += f"; K and V {tuple(k.shape)}: {spec.kv_heads} heads shared by groups"
    if attn.rotary is not None:
        d_k += "; Q and K rotated by their positions (RoPE)"
    trace(f"self-attention: Q, K, V = x W^Q, x W^K, x W^V in {spec.num_heads} heads", q, d_k)
    scores = attention_scores(q, k)  # (1, H, Tq, Tk)
    trace("scores = Q Kᵀ / √d_k", scores, f"√d_k = {math.sqrt(spec.d_k):.2f}")
    heads_out, weights = scaled_dot_product_attention(q, k, v, mask)  # (1, H, Tq, d_k), weights
    looks = _looks_at(weights[0, 0], pieces, pieces)
    trace("weights = softmax(scores)", weights, "head 1 looks most at: " + looks)
    trace("head_i = weights V", heads_out)
    concat = attn.merge_heads(heads_out)  # (1, Tq, D)
    trace("Concat(head_1, ..., head_h)", concat)
    out = attn.out_proj(concat)  # (1, Tq, D)
    trace("· W^O", out)
    return out


def _walk_feed_forward(ff: FeedForward | SwiGLUFeedForward, x: Tensor, trace: _Trace) -> Tensor:
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, or (SiLU(x W_1) ⊙ x W_3) W_2, recorded."""
    hidden = ff.hidden(x)  # (1, S, d_ff)
    if isinstance(ff, SwiGLUFeedForward):
        trace("feed-forward: SiLU(x W_1) ⊙ x W_3 (SwiGLU)", hidden)
        trace("feed-forward: · W_2", out := ff.linear2(hidden))  # (1, S, D)
        return out
    active = f"{(hidden > 0).float().mean():.0%} of the units active"
    trace("feed-forward: max(0, x W_1 + b_1)", hidden, active)
    out = ff.linear2(hidden)  # (1, S, D)
    trace("feed-forward: · W_2 + b_2", out)
    return out


def _walk_decoder(
    model: Transformer,
    memory: Tensor,
    src_mask: Tensor,
    tgt_in: Tensor,
    produced: list[int],
    pieces: _Pieces,
    trace: _Trace,
    search_name: str,
) -> None:
    """Decode the translation again one position at a time with the cache, recording each step."""
    trace(
        f"Decoder: one position at a time, with the cache ({search_name} chose the pieces)", depth=0
    )
    cache = model.new_cache()
    step_logits = []
    for t in range(tgt_in.size(1)):
        recorder = AttentionRecorder()  # per layer: (1, H, 1, t + 1) and (1, H, 1, S) weights
        x = model.tgt_embed(tgt_in[:, t : t + 1])  # (1, 1, D)
        note = f"its embedding × √d_model, at position {t}"
        trace(f"step {t + 1}: reads {pieces.decoder_input[t]}", x, note, depth=1)
        h = model.decoder(x, memory, src_mask, cache, recorder)  # (1, 1, D)
        for number, layer in enumerate(model.decoder.layers, 1):
            own, cross = recorder[layer.self_attn], recorder[layer.cross_attn]
            most = _most_per_head(own[0, :, 0], pieces.decoder_input)
            trace(f"layer {number} masked self-attention", own, "heads look most at: " + most)
            most = _most_per_head(cross[0, :, 0], pieces.source)
            trace(f"layer {number} cross-attention", cross, "heads look most at: " + most)
        logits = model.output_proj(h)[:, -1]  # (1, V)
        step_logits.append(logits)
        trace("logits = h W_outᵀ", logits)
        probs = logits.float().softmax(dim=-1)  # (1, V)
        trace("P(next piece) = softmax(logits)", probs)
        chosen = produced[t]
        top = probs[0].topk(min(TOP_ALTERNATIVES + 1, probs.size(-1)))
        others = [
            f"{pieces.target_piece(i)} {p:.3f}"
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            if i != chosen
        ][:TOP_ALTERNATIVES]
        name = f"chosen: {pieces.target_piece(chosen)} (p = {probs[0, chosen]:.3f})"
        trace(name, None, "then: " + ", ".join(others))
    full = model.decode(tgt_in, memory, src_mask)[0]  # (T, V): teacher forcing, no cache
    _check_same("the step-by-step decoding", torch.cat(step_logits), full)


def _most_per_head(weights: Tensor, key_pieces: list[str]) -> str:
    """Per head (rows of weights (H, Tk)), the key piece it attends most, and how much."""
    best_weight, best_key = weights.float().max(dim=-1)
    return ", ".join(
        f"{key_pieces[k]} {w:.2f}"
        for k, w in zip(best_key.tolist(), best_weight.tolist(), strict=True)
    )


def _check_same(what: str, walked: Tensor, model_output: Tensor) -> None:
    """The walk must compute what the model computes (a bug otherwise, not a user error)."""
    tolerance = 1e-2 if walked.dtype == torch.bfloat16 else 1e-4
    if not torch.allclose(walked.float(), model_output.float(), atol=tolerance, rtol=tolerance):
        raise RuntimeError(f"{what} differs from the model's own forward pass")


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of `text`: "How are you?" -> "how-are-you"."""
    words = re.sub(r"[^\w]+", "-", text.lower(), flags=re.UNICODE).strip("-")
    return words[:limit].rstrip("-") or "sentence"


def folder_name(text: str) -> str:
    """A folder name of its own for each distinct text: its slug and a short hash of the text.

    "how are you" -> "how-are-you-<8 hex>"; "How are you?" has the same slug but another hash,
    so one explanation never lands in the folder of another.
    """
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"{slug(text)}-{digest}"
