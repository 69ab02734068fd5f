"""Properties of the encoder-decoder Transformer: causality, padding, cache, tying, size."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer.config import ModelConfig
from transformer.model import (
    AddNorm,
    DecoderLayer,
    EncoderLayer,
    FeedForward,
    LayerSpec,
    LearnedPositionalEncoding,
    MultiHeadAttention,
    SinusoidalPositionalEncoding,
    Transformer,
    build_model,
    causal_mask,
    padding_mask,
)

PAD, BOS, EOS = 0, 2, 3
VOCAB = 20
TOL = {"atol": 1e-5, "rtol": 1e-5}


def tiny_model(seed: int = 0, fast: bool = False, **overrides: object) -> Transformer:
    """A 2+2-layer, d_model 32 model in eval mode (dropout off): the paper's layers, or with
    the fast paths."""
    settings: dict[str, object] = {
        "src_vocab_size": VOCAB,
        "tgt_vocab_size": VOCAB,
        "d_model": 32,
        "num_heads": 2,
        "d_ff": 64,
        "num_encoder_layers": 2,
        "num_decoder_layers": 2,
        "dropout": 0.0,
        "max_positions": 64,
    }
    settings.update(overrides)
    torch.manual_seed(seed)
    return build_model(ModelConfig(**settings), fast).eval()


def random_ids(batch: int, length: int, seed: int) -> Tensor:
    """(batch, length) ids of real tokens (never PAD, BOS or EOS)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB, (batch, length), generator=g)


def padded_source() -> Tensor:
    """Three sources of length 7, 5 and 3, padded to 7."""
    src = random_ids(3, 7, seed=1)
    src[1, 5:] = PAD
    src[2, 3:] = PAD
    return src


BOTH_WAYS = pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
ARCHITECTURES = [
    pytest.param({"norm_position": "post", "positional_encoding": "sinusoidal"}, id="post-sin"),
    pytest.param({"norm_position": "pre", "positional_encoding": "sinusoidal"}, id="pre-sin"),
    pytest.param({"norm_position": "post", "positional_encoding": "learned"}, id="post-learned"),
    pytest.param({"norm_position": "pre", "positional_encoding": "learned"}, id="pre-learned"),
]


# --------------------------------------------------------------------- causality, padding


@pytest.mark.parametrize("arch", ARCHITECTURES)
@torch.no_grad()
def test_changing_future_target_tokens_leaves_earlier_logits_unchanged(arch: dict) -> None:
    model = tiny_model(**arch)
    src, tgt = padded_source(), random_ids(3, 6, seed=2)
    logits = model(src, tgt)
    for t in range(5):
        changed = tgt.clone()
        changed[:, t + 1 :] = random_ids(3, 5 - t, seed=10 + t)
        assert not torch.equal(changed, tgt)
        changed_logits = model(src, changed)
        torch.testing.assert_close(changed_logits[:, : t + 1], logits[:, : t + 1], **TOL)
        assert not torch.allclose(changed_logits[:, t + 1 :], logits[:, t + 1 :])


@pytest.mark.parametrize("arch", ARCHITECTURES[:2])
@torch.no_grad()
def test_appending_source_padding_leaves_the_logits_unchanged(arch: dict) -> None:
    model = tiny_model(**arch)
    src, tgt = random_ids(2, 5, seed=3), random_ids(2, 4, seed=4)
    logits = model(src, tgt)
    padded = torch.cat([src, torch.full((2, 4), PAD)], dim=1)
    torch.testing.assert_close(model(padded, tgt), logits, **TOL)


@torch.no_grad()
def test_a_sentence_has_the_same_logits_alone_and_batched_with_a_longer_one() -> None:
    model = tiny_model()
    short, long = random_ids(1, 3, seed=5), random_ids(1, 8, seed=6)
    tgt = random_ids(2, 5, seed=7)
    alone = model(short, tgt[:1])
    batch = torch.cat([torch.cat([short, torch.full((1, 5), PAD)], dim=1), long])  # (2, 8)
    batched = model(batch, tgt)
    torch.testing.assert_close(batched[:1], alone, **TOL)
    torch.testing.assert_close(batched[1:], model(long, tgt[1:]), **TOL)


# ------------------------------------------------------------------------- the KV cache


def decode_step_by_step(model: Transformer, src: Tensor, tgt: Tensor) -> Tensor:
    """Logits (B, T, V) from feeding `tgt` one token at a time through a cache."""
    src_mask = model.source_mask(src)
    memory = model.encode(src, src_mask)
    cache = model.new_cache()
    steps = []
    for t in range(tgt.size(1)):
        assert cache.length == t
        steps.append(model.decode(tgt[:, t : t + 1], memory, src_mask, cache))
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@BOTH_WAYS
@torch.no_grad()
def test_step_by_step_decoding_with_cache_equals_full_forward(arch: dict, fast: bool) -> None:
    model = tiny_model(fast=fast, **arch)
    src, tgt = padded_source(), random_ids(3, 6, seed=8)
    torch.testing.assert_close(decode_step_by_step(model, src, tgt), model(src, tgt), **TOL)


@pytest.mark.parametrize("arch", ARCHITECTURES[:2])
@torch.no_grad()
def test_decoding_a_prefix_then_steps_with_cache_equals_full_forward(arch: dict) -> None:
    model = tiny_model(**arch)
    src, tgt = padded_source(), random_ids(3, 7, seed=9)
    src_mask = model.source_mask(src)
    memory = model.encode(src, src_mask)
    cache = model.new_cache()
    parts = [model.decode(tgt[:, :3], memory, src_mask, cache)]  # 3 queries, 3 keys
    parts.append(model.decode(tgt[:, 3:5], memory, src_mask, cache))  # 2 queries, 5 keys
    parts += [model.decode(tgt[:, t : t + 1], memory, src_mask, cache) for t in (5, 6)]
    assert cache.length == 7
    torch.testing.assert_close(torch.cat(parts, dim=1), model(src, tgt), **TOL)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@BOTH_WAYS
@torch.no_grad()
def test_cache_reorder_mid_decoding_equals_full_forward_on_reordered_inputs(
    arch: dict, fast: bool
) -> None:
    model = tiny_model(fast=fast, **arch)
    src, tgt = padded_source(), random_ids(3, 6, seed=11)
    indices = torch.tensor([2, 0, 0, 1])  # permute and duplicate rows, as beam search does
    src_mask = model.source_mask(src)
    memory = model.encode(src, src_mask)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, t : t + 1], memory, src_mask, cache) for t in range(3)]
    cache.reorder(indices)
    memory, src_mask = memory[indices], src_mask[indices]
    later = [model.decode(tgt[indices, t : t + 1], memory, src_mask, cache) for t in range(3, 6)]
    assert cache.length == 6
    full = model(src[indices], tgt[indices])
    torch.testing.assert_close(torch.cat(later, dim=1), full[:, 3:], **TOL)
    torch.testing.assert_close(torch.cat(steps, dim=1)[indices], full[:, :3], **TOL)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@BOTH_WAYS
@torch.no_grad()
def test_beams_reading_one_source_row_per_sentence_equal_a_full_forward(
    arch: dict, fast: bool
) -> None:
    # Beam search: one hypothesis per sentence at first, then 4 beams each (12 rows) that read
    # their sentence's encoder output; the cache keeps its keys/values once per sentence.
    model, beams = tiny_model(fast=fast, **arch), 4
    src, tgt = padded_source(), random_ids(12, 5, seed=21)
    tgt[:, 0] = BOS  # every beam starts alike
    src_mask = model.source_mask(src)
    memory = model.encode(src, src_mask)  # (3, S, D)
    cache = model.new_cache()
    first = model.decode(tgt[::beams, :1], memory, src_mask, cache)  # one row per sentence
    copies = torch.arange(3).repeat_interleave(beams)  # (12,) row b * 4 + k is sentence b
    cache.reorder(copies)
    assert cache.cross_attn[0].k.size(0) == 3  # still one row per sentence
    later = [model.decode(tgt[:, t : t + 1], memory, src_mask, cache) for t in range(1, 5)]
    full = model(src[copies], tgt)
    torch.testing.assert_close(first[copies], full[:, :1], **TOL)
    torch.testing.assert_close(torch.cat(later, dim=1), full[:, 1:], **TOL)
    # Sentence 1 leaves: beams of sentences 0 and 2 go on, reordered within each sentence.
    kept_rows = torch.tensor([1, 0, 0, 2, 8, 9, 11, 11])
    cache.reorder(kept_rows)
    assert cache.cross_attn[0].k.size(0) == 2
    extra = random_ids(8, 1, seed=22)
    step = model.decode(extra, None, None, cache)  # the cache holds the source now
    expected = model(src[copies][kept_rows], torch.cat([tgt[kept_rows], extra], dim=1))
    torch.testing.assert_close(step, expected[:, -1:], **TOL)


@pytest.mark.parametrize("arch", ARCHITECTURES[:2])
@BOTH_WAYS
@torch.no_grad()
def test_decoding_several_rows_per_source_without_a_cache_equals_repeating_the_source(
    arch: dict, fast: bool
) -> None:
    model = tiny_model(fast=fast, **arch)
    src, tgt = padded_source(), random_ids(6, 4, seed=23)  # 2 target rows per sentence
    src_mask = model.source_mask(src)
    memory = model.encode(src, src_mask)
    shared = model.decode(tgt, memory, src_mask)
    copies = torch.arange(3).repeat_interleave(2)
    torch.testing.assert_close(shared, model.decode(tgt, memory[copies], src_mask[copies]), **TOL)


@BOTH_WAYS
@torch.no_grad()
def test_a_reorder_that_mixes_sentences_gives_each_row_its_own_source(fast: bool) -> None:
    # Not what the searches do, but a cache must follow any reorder.
    model = tiny_model(fast=fast)
    src, tgt = padded_source(), random_ids(6, 3, seed=24)
    tgt[:, 0] = BOS  # the beams of a sentence start alike
    src_mask = model.source_mask(src)
    memory = model.encode(src, src_mask)
    cache = model.new_cache()
    model.decode(tgt[::2, :1], memory, src_mask, cache)
    cache.reorder(torch.arange(3).repeat_interleave(2))  # 2 beams per sentence
    model.decode(tgt[:, 1:2], memory, src_mask, cache)
    mixed = torch.tensor([4, 0, 1, 5, 2])  # rows of sentences 2, 0, 0, 2, 1
    cache.reorder(mixed)
    assert cache.cross_attn[0].k.size(0) == 5
    step = model.decode(tgt[mixed, 2:3], None, None, cache)
    sources = torch.tensor([2, 0, 0, 2, 1])
    torch.testing.assert_close(step, model(src[sources], tgt[mixed])[:, -1:], **TOL)


@torch.no_grad()
def test_the_cache_keeps_cross_attention_keys_contiguous() -> None:
    # A strided view there would be copied by every decoding step's matmul.
    model = tiny_model()
    src = padded_source()
    src_mask = model.source_mask(src)
    cache = model.new_cache()
    model.decode(random_ids(3, 1, seed=3), model.encode(src, src_mask), src_mask, cache)
    for layer in cache.cross_attn:
        assert layer.k.is_contiguous() and layer.v.is_contiguous()


# ----------------------------------------------------------------- positional encodings


def test_sinusoidal_encoding_matches_the_papers_formula() -> None:
    d_model = 6
    encoding = SinusoidalPositionalEncoding(d_model)
    zeros = torch.zeros(1, 4, d_model)
    table = encoding(zeros, offset=7)[0]  # positions 7, 8, 9, 10
    for row, pos in enumerate(range(7, 11)):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            assert table[row, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[row, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    # Two entries worked by hand: PE(1, 0) = sin(1), PE(1, 3) = cos(1 / 10000^(2/6)).
    first = encoding(torch.zeros(1, 2, d_model))[0, 1]
    assert first[0].item() == pytest.approx(0.8414710, abs=1e-6)
    assert first[3].item() == pytest.approx(math.cos(1 / 10000 ** (1 / 3)), abs=1e-6)
    assert first[3].item() == pytest.approx(0.9989229, abs=1e-6)


def test_sinusoidal_encoding_adds_to_its_input_and_is_offset_consistent() -> None:
    encoding = SinusoidalPositionalEncoding(8)
    x = torch.randn(2, 10, 8)
    full = encoding(x)
    torch.testing.assert_close(full - x, encoding(torch.zeros(1, 10, 8)).expand(2, -1, -1))
    torch.testing.assert_close(encoding(x[:, 4:], offset=4), full[:, 4:])


def test_sinusoidal_positions_beyond_the_precomputed_table_continue_it() -> None:
    short, long = SinusoidalPositionalEncoding(8, precomputed=4), SinusoidalPositionalEncoding(8)
    x = torch.randn(2, 10, 8)
    torch.testing.assert_close(short(x), long(x))  # positions 4.. computed on the fly
    torch.testing.assert_close(short(x[:, 3:], offset=3), long(x)[:, 3:])
    assert "table" not in long.state_dict()  # nothing new in checkpoints


@torch.no_grad()
def test_sinusoidal_model_accepts_lengths_beyond_max_positions() -> None:
    model = tiny_model(max_positions=8)
    src, tgt = random_ids(2, 20, seed=12), random_ids(2, 15, seed=13)
    logits = model(src, tgt)
    assert logits.shape == (2, 15, VOCAB)
    assert logits.isfinite().all()


def test_learned_positions_beyond_their_maximum_raise_a_clear_error() -> None:
    encoding = LearnedPositionalEncoding(8, max_positions=5)
    assert encoding(torch.zeros(1, 5, 8)).shape == (1, 5, 8)
    with pytest.raises(ValueError, match="max_positions=5"):
        encoding(torch.zeros(1, 6, 8))
    with pytest.raises(ValueError, match="max_positions=5"):
        encoding(torch.zeros(1, 1, 8), offset=5)
    model = tiny_model(positional_encoding="learned", max_positions=6)
    with pytest.raises(ValueError, match="max_positions"):
        model(random_ids(1, 7, seed=14), random_ids(1, 3, seed=15))


# --------------------------------------------------------------- architecture choices


def count_layer_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.LayerNorm) for m in module.modules())


def test_pre_norm_adds_a_final_layer_norm_to_each_stack_and_post_norm_does_not() -> None:
    post, pre = tiny_model(norm_position="post"), tiny_model(norm_position="pre")
    # 2 encoder layers x 2 sublayers, 2 decoder layers x 3 sublayers
    assert count_layer_norms(post.encoder) == 4 and count_layer_norms(post.decoder) == 6
    assert count_layer_norms(pre.encoder) == 5 and count_layer_norms(pre.decoder) == 7
    with torch.no_grad():
        memory = pre.encode(random_ids(2, 5, seed=16))  # ends with LayerNorm(weight 1, bias 0)
    torch.testing.assert_close(memory.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(memory.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_feed_forward_applies_the_chosen_activation(activation: str) -> None:
    torch.manual_seed(0)
    ff = FeedForward(8, 16, activation)
    x = torch.randn(2, 3, 8)
    act = F.relu if activation == "relu" else F.gelu
    torch.testing.assert_close(ff(x), ff.linear2(act(ff.linear1(x))), **TOL)
    other = F.gelu if activation == "relu" else F.relu
    assert not torch.allclose(ff(x), ff.linear2(other(ff.linear1(x))))


@torch.no_grad()
def test_gelu_model_differs_from_relu_model_with_the_same_weights() -> None:
    relu, gelu = tiny_model(activation="relu"), tiny_model(activation="gelu")
    gelu.load_state_dict(relu.state_dict())
    src, tgt = padded_source(), random_ids(3, 4, seed=17)
    assert not torch.allclose(relu(src, tgt), gelu(src, tgt))


# ------------------------------------------------------------------------ the layer spec


def test_every_layer_is_built_from_one_spec_read_from_the_config() -> None:
    model = tiny_model(positional_encoding="rope", num_heads=4, num_kv_heads=2)
    spec = LayerSpec.from_config(model.config)
    assert (spec.d_k, spec.kv_heads, spec.kv_dim, spec.rope) == (8, 2, 16, True)
    layers = [*model.encoder.layers, *model.decoder.layers]
    assert all(layer.self_attn.spec == spec for layer in layers)
    assert all(layer.self_attn.rotary.d_k == spec.d_k for layer in layers)  # d_k: one home
    for layer in model.decoder.layers:  # source and target positions are not comparable
        assert layer.cross_attn.spec == dataclasses.replace(spec, rope=False)
        assert layer.cross_attn.rotary is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"num_heads": 3}, "d_model"),
        ({"num_kv_heads": 3}, "num_kv_heads"),
        ({"activation": "swish"}, "activation"),
        ({"norm_position": "middle"}, "norm_position"),
        ({"norm": "batchnorm"}, "norm"),
        ({"d_model": 12, "num_heads": 4, "rope": True}, "d_k"),
    ],
)
def test_a_layer_spec_refuses_an_impossible_layer_naming_the_field(
    changes: dict, field: str
) -> None:
    values = {"d_model": 16, "num_heads": 4, "d_ff": 32, **changes}
    with pytest.raises(ValueError, match=field):
        LayerSpec(**values)


# ------------------------------------------------------ layers against the paper's formulas


def paper_attention(mha: MultiHeadAttention, query: Tensor, key_value: Tensor, mask) -> Tensor:
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, one head at a time, from mha's weights."""
    D, d_k = mha.spec.d_model, mha.spec.d_k
    W, b = mha.qkv_proj.weight, mha.qkv_proj.bias
    heads = []
    for i in range(mha.spec.num_heads):
        rows = slice(i * d_k, (i + 1) * d_k)  # head i's columns of W^Q, W^K, W^V
        q = query @ W[:D][rows].T + b[:D][rows]
        k = key_value @ W[D : 2 * D][rows].T + b[D : 2 * D][rows]
        v = key_value @ W[2 * D :][rows].T + b[2 * D :][rows]
        scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)
        if mask is not None:
            scores = scores.masked_fill(~mask.reshape(mask.shape[0], *mask.shape[2:]), -math.inf)
        heads.append(scores.softmax(-1) @ v)
    return torch.cat(heads, dim=-1) @ mha.out_proj.weight.T + mha.out_proj.bias


def paper_sublayer(add_norm: AddNorm, x: Tensor, sublayer) -> Tensor:
    """Post-norm LayerNorm(x + Sublayer(x)), or pre-norm x + Sublayer(LayerNorm(x))."""
    if add_norm.pre_norm:
        return x + sublayer(add_norm.norm(x))
    return add_norm.norm(x + sublayer(x))


def paper_feed_forward(ff: FeedForward, x: Tensor) -> Tensor:
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, from ff's weights."""
    hidden = torch.relu(x @ ff.linear1.weight.T + ff.linear1.bias)
    return hidden @ ff.linear2.weight.T + ff.linear2.bias


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter random (LayerNorm gains and biases too), eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)
    return module.eval()


@pytest.mark.parametrize("norm_position", ["post", "pre"])
@torch.no_grad()
def test_encoder_layer_computes_the_papers_self_attention_and_feed_forward_sublayers(
    norm_position: str,
) -> None:
    spec = LayerSpec(16, 2, 32, dropout=0.0, norm_position=norm_position)
    layer = randomise(EncoderLayer(spec), seed=1)
    x = torch.randn(2, 5, 16)
    mask = padding_mask(torch.tensor([[4, 5, 6, 7, 8], [4, 5, 0, 0, 0]]), PAD)
    h = paper_sublayer(
        layer.attn_sublayer, x, lambda y: paper_attention(layer.self_attn, y, y, mask)
    )
    expected = paper_sublayer(
        layer.ff_sublayer, h, lambda y: paper_feed_forward(layer.feed_forward, y)
    )
    torch.testing.assert_close(layer(x, mask), expected, **TOL)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
@torch.no_grad()
def test_decoder_layer_computes_masked_self_attention_cross_attention_and_feed_forward(
    norm_position: str,
) -> None:
    spec = LayerSpec(16, 2, 32, dropout=0.0, norm_position=norm_position)
    layer = randomise(DecoderLayer(spec), seed=2)
    x, memory = torch.randn(2, 4, 16), torch.randn(2, 5, 16)
    src_mask = padding_mask(torch.tensor([[4, 5, 6, 7, 8], [4, 5, 6, 0, 0]]), PAD)
    tgt_mask = causal_mask(4, 4)[None, None]  # (1, 1, T, T)
    h = paper_sublayer(
        layer.self_attn_sublayer, x, lambda y: paper_attention(layer.self_attn, y, y, tgt_mask)
    )
    h = paper_sublayer(
        layer.cross_attn_sublayer,
        h,
        lambda y: paper_attention(layer.cross_attn, y, memory, src_mask),
    )
    expected = paper_sublayer(
        layer.ff_sublayer, h, lambda y: paper_feed_forward(layer.feed_forward, y)
    )
    torch.testing.assert_close(layer(x, memory, src_mask, causal_mask(4, 4)), expected, **TOL)


@torch.no_grad()
def test_embeddings_are_scaled_by_the_square_root_of_d_model() -> None:
    model = tiny_model()  # d_model 32
    ids = random_ids(2, 3, seed=30)
    table = model.src_embed.embedding.weight
    torch.testing.assert_close(model.src_embed(ids), table[ids] * math.sqrt(32), **TOL)


@torch.no_grad()
def test_the_output_distribution_is_the_softmax_of_the_decoder_output_times_w_out() -> None:
    model = tiny_model(norm_position="pre")
    src, tgt = padded_source(), random_ids(3, 4, seed=31)
    src_mask = model.source_mask(src)
    memory = model.encode(src, src_mask)
    h = model.decoder(model.tgt_embed(tgt), memory, src_mask)  # (B, T, D)
    expected = (h @ model.output_proj.weight.T).softmax(-1)  # softmax(h_t W_outᵀ)
    torch.testing.assert_close(model(src, tgt).softmax(-1), expected, **TOL)


# ----------------------------------------------------------------- size and weight tying


def test_base_model_has_the_parameter_count_of_the_paper_architecture() -> None:
    V, D, d_ff, N = 37_000, 512, 2048, 6
    config = ModelConfig(
        src_vocab_size=V,
        tgt_vocab_size=V,
        d_model=D,
        num_heads=8,
        d_ff=d_ff,
        num_encoder_layers=N,
        num_decoder_layers=N,
        share_embeddings=True,
        tie_output_embeddings=True,
    )
    model = Transformer(config)
    attention = 4 * (D * D + D)  # W^Q, W^K, W^V, W^O with biases
    feed_forward = 2 * D * d_ff + d_ff + D  # W_1, W_2 with biases
    layer_norm = 2 * D  # gain and bias
    encoder_layer = attention + feed_forward + 2 * layer_norm
    decoder_layer = 2 * attention + feed_forward + 3 * layer_norm
    embeddings = V * D  # one matrix: source, target and (tied, bias-free) output projection
    expected = embeddings + N * encoder_layer + N * decoder_layer
    assert model.num_parameters() == expected
    assert sum(p.numel() for p in model.parameters()) == expected
    assert 62_000_000 < expected < 64_000_000  # "about 63M" for this vocabulary


def test_output_projection_shares_storage_with_the_target_embedding() -> None:
    model = tiny_model(tie_output_embeddings=True)
    target = model.tgt_embed.embedding.weight
    assert model.output_proj.weight is target
    assert model.output_proj.weight.data_ptr() == target.data_ptr()
    with torch.no_grad():
        target[7].fill_(0.5)
    assert (model.output_proj.weight[7] == 0.5).all()


def test_shared_embeddings_are_one_parameter_and_separate_ones_are_not() -> None:
    shared = tiny_model(share_embeddings=True)
    assert shared.src_embed.embedding.weight is shared.tgt_embed.embedding.weight
    separate = tiny_model(share_embeddings=False, tie_output_embeddings=True)
    assert separate.src_embed.embedding.weight.data_ptr() != (
        separate.tgt_embed.embedding.weight.data_ptr()
    )
    assert separate.output_proj.weight is separate.tgt_embed.embedding.weight
    assert separate.output_proj.weight is not separate.src_embed.embedding.weight


def test_untied_output_projection_is_its_own_parameter() -> None:
    model = tiny_model(tie_output_embeddings=False, share_embeddings=False)
    weights = {
        model.output_proj.weight.data_ptr(),
        model.src_embed.embedding.weight.data_ptr(),
        model.tgt_embed.embedding.weight.data_ptr(),
    }
    assert len(weights) == 3
    tied = tiny_model(tie_output_embeddings=True, share_embeddings=False)
    assert model.num_parameters() == tied.num_parameters() + VOCAB * 32


def test_padding_embedding_starts_at_zero() -> None:
    model = tiny_model()
    assert (model.src_embed.embedding.weight[PAD] == 0).all()
    assert (model.tgt_embed.embedding.weight[PAD] == 0).all()


# ------------------------------------------------------------------------------ training


def test_tiny_model_overfits_a_handful_of_sentence_pairs() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    pairs = []
    for _ in range(6):
        n, m = (int(x) for x in torch.randint(4, 9, (2,), generator=g))
        pairs.append((torch.randint(4, VOCAB, (n,), generator=g), torch.randint(4, VOCAB, (m,))))
    S, T = max(len(s) for s, _ in pairs), max(len(t) for _, t in pairs) + 1
    src = torch.full((len(pairs), S), PAD)
    tgt_in = torch.full((len(pairs), T), PAD)
    tgt_out = torch.full((len(pairs), T), PAD)
    for i, (s, t) in enumerate(pairs):
        src[i, : len(s)] = s
        tgt_in[i, : len(t) + 1] = torch.cat([torch.tensor([BOS]), t])
        tgt_out[i, : len(t) + 1] = torch.cat([t, torch.tensor([EOS])])
    model = tiny_model(num_encoder_layers=1, num_decoder_layers=1).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)
    start = time.perf_counter()
    for _ in range(300):
        logits = model(src, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt_out.reshape(-1), ignore_index=PAD)
        if loss.item() < 0.05:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1, f"loss still {loss.item():.3f}"
    assert time.perf_counter() - start < 30
    with torch.no_grad():
        predicted = model.eval()(src, tgt_in).argmax(-1)
    assert torch.equal(predicted[tgt_out != PAD], tgt_out[tgt_out != PAD])


# ----------------------------------------------------------------------------- bad input


def test_mismatched_source_and_target_batch_sizes_are_rejected() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="batch sizes differ"):
        model(random_ids(2, 5, seed=0), random_ids(3, 4, seed=1))
    memory = model.encode(random_ids(2, 5, seed=0))
    with pytest.raises(ValueError, match="batch sizes differ"):
        model.decode(random_ids(3, 4, seed=1), memory, None)


@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 100, -1])
def test_token_ids_outside_the_vocabulary_are_rejected(bad: int) -> None:
    model = tiny_model()
    ids = random_ids(2, 5, seed=0)
    ids[1, 2] = bad
    with pytest.raises(ValueError, match=rf"source ids must lie in \[0, {VOCAB}\)"):
        model(ids, random_ids(2, 4, seed=1))
    with pytest.raises(ValueError, match=rf"target ids must lie in \[0, {VOCAB}\)"):
        model(random_ids(2, 4, seed=1), ids)


def test_float_token_ids_are_rejected() -> None:
    model = tiny_model()
    ids = random_ids(2, 5, seed=0)
    with pytest.raises(TypeError, match="source ids must be an integer tensor"):
        model(ids.float(), ids)
    with pytest.raises(TypeError, match="target ids must be an integer tensor"):
        model(ids, ids.float())


def test_one_dimensional_token_ids_are_rejected() -> None:
    model = tiny_model()
    ids = random_ids(2, 5, seed=0)
    with pytest.raises(ValueError, match=r"source ids must have shape \(batch, length\)"):
        model(ids[0], ids)
    with pytest.raises(ValueError, match=r"target ids must have shape \(batch, length\)"):
        model(ids, ids[0])


def test_model_needs_vocabulary_sizes() -> None:
    with pytest.raises(ValueError, match="src_vocab_size and tgt_vocab_size"):
        Transformer(ModelConfig(d_model=32, num_heads=2))


# --------------------------------------------------------------------------- Marian's switches


def test_halves_layout_holds_the_interleaved_sines_then_the_cosines() -> None:
    from transformer.model.positions import sinusoidal_table

    positions = torch.arange(7)
    interleaved = sinusoidal_table(positions, 10)
    halves = sinusoidal_table(positions, 10, "halves")
    assert torch.equal(halves[:, :5], interleaved[:, 0::2])  # sin(p ω_i)
    assert torch.equal(halves[:, 5:], interleaved[:, 1::2])  # cos(p ω_i)


def test_silu_feed_forward_is_w2_of_silu_of_w1() -> None:
    torch.manual_seed(0)
    ffn = FeedForward(8, 16, "silu")
    x = torch.randn(2, 3, 8)
    h = x @ ffn.linear1.weight.T + ffn.linear1.bias
    expected = (h * torch.sigmoid(h)) @ ffn.linear2.weight.T + ffn.linear2.bias
    torch.testing.assert_close(ffn(x), expected)


def test_output_bias_is_added_to_the_logits_and_pad_start_starts_the_decoder_from_pad() -> None:
    config = ModelConfig(
        src_vocab_size=11, tgt_vocab_size=11, d_model=8, num_heads=2, d_ff=16,
        num_encoder_layers=1, num_decoder_layers=1, dropout=0.0,
        output_bias=True, decoder_start="pad",
    )  # fmt: skip
    model = Transformer(config).eval()
    with torch.no_grad():
        model.output_proj.bias.copy_(torch.arange(11.0))
        src, tgt = torch.tensor([[4, 5, 3]]), torch.tensor([[0, 6]])
        h = model.teacher_forced_states(src, tgt)
        expected = h @ model.tgt_embed.embedding.weight.T + torch.arange(11.0)
        torch.testing.assert_close(model(src, tgt), expected)
    assert (
        model.special_ids.bos == 0
        and Transformer(dataclasses.replace(config, decoder_start="bos")).special_ids.bos == 2
    )
