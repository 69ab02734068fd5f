"""The modern switches: RMSNorm, SwiGLU, rotary positions (RoPE), grouped-query attention.

Each against its formula, and the model's defining properties (causality, padding
invariance, cache ≡ no cache) for every combination of the switches.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from transformer.config import ConfigError, ModelConfig, config_from_dict
from transformer.model import (
    LayerSpec,
    MultiHeadAttention,
    RMSNorm,
    RotaryPositionalEncoding,
    SwiGLUFeedForward,
    Transformer,
    build_model,
)
from transformer.model.attention import (
    causal_mask,
    fused_attention,
    repeat_kv_heads,
    scaled_dot_product_attention,
)
from transformer.model.positions import rotary_angles

PAD, BOS = 0, 2
VOCAB = 20
TOL = {"atol": 1e-5, "rtol": 1e-5}


def test_rms_norm_is_x_over_its_root_mean_square_times_the_gain() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
    x = torch.randn(3, 4, 8)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected, **TOL)
    # No centring: a constant vector keeps its sign (LayerNorm would give zeros).
    assert (norm(torch.full((1, 8), 3.0)) / norm.weight > 0.99).all()


def test_swiglu_is_silu_of_x_w1_times_x_w3_then_w2() -> None:
    torch.manual_seed(1)
    ff = SwiGLUFeedForward(8, 12)
    x = torch.randn(2, 5, 8)
    w1, w3, w2 = ff.linear1.weight, ff.linear3.weight, ff.linear2.weight
    z = x @ w1.T
    expected = ((z * torch.sigmoid(z)) * (x @ w3.T)) @ w2.T
    torch.testing.assert_close(ff(x), expected, **TOL)
    assert sum(p.numel() for p in ff.parameters()) == 3 * 8 * 12  # no biases


def test_rope_rotates_each_pair_of_features_by_position_times_theta() -> None:
    rope = RotaryPositionalEncoding(d_k=4)
    x = torch.randn(1, 1, 3, 4)
    out = rope(x, offset=5)
    for t in range(3):
        for i in range(2):
            angle = (5 + t) / 10000 ** (2 * i / 4)
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[0, 0, t, 2 * i], x[0, 0, t, 2 * i + 1]
            torch.testing.assert_close(out[0, 0, t, 2 * i], a * c - b * s, **TOL)
            torch.testing.assert_close(out[0, 0, t, 2 * i + 1], a * s + b * c, **TOL)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), **TOL)  # rotations keep length


@pytest.mark.parametrize("offset", [1, 7, 1500])  # 1500: beyond the precomputed angles
def test_rope_scores_depend_only_on_the_distance_between_positions(offset: int) -> None:
    torch.manual_seed(2)
    rope = RotaryPositionalEncoding(d_k=8)
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    scores = rope(q) @ rope(k).transpose(-2, -1)  # positions 0..5
    shifted = rope(q, offset) @ rope(k, offset).transpose(-2, -1)  # positions offset..offset+5
    torch.testing.assert_close(shifted, scores, atol=1e-4, rtol=1e-4)


def test_rope_angles_are_positions_times_the_papers_frequencies() -> None:
    angles = rotary_angles(torch.arange(3), 4)
    torch.testing.assert_close(angles, torch.tensor([[0, 0], [1, 0.01], [2, 0.02]]), **TOL)


def test_grouped_query_attention_equals_full_attention_with_each_kv_head_repeated() -> None:
    # 4 query heads sharing 2 K/V heads = 4-head attention whose W^K, W^V rows repeat each
    # shared head for the two query heads of its group.
    torch.manual_seed(3)
    grouped = MultiHeadAttention(LayerSpec(16, 4, 32, num_kv_heads=2)).eval()
    full = MultiHeadAttention(LayerSpec(16, 4, 32)).eval()
    d_k, D = 4, 16
    with torch.no_grad():
        w, b = grouped.qkv_proj.weight, grouped.qkv_proj.bias  # (16 + 8 + 8, 16)
        k_rows = w[D : D + 8].view(2, d_k, D).repeat_interleave(2, 0).reshape(D, D)
        v_rows = w[D + 8 :].view(2, d_k, D).repeat_interleave(2, 0).reshape(D, D)
        k_bias = b[D : D + 8].view(2, d_k).repeat_interleave(2, 0).reshape(D)
        v_bias = b[D + 8 :].view(2, d_k).repeat_interleave(2, 0).reshape(D)
        full.qkv_proj.weight.copy_(torch.cat([w[:D], k_rows, v_rows]))
        full.qkv_proj.bias.copy_(torch.cat([b[:D], k_bias, v_bias]))
        full.out_proj.load_state_dict(grouped.out_proj.state_dict())
    x, memory = torch.randn(2, 5, D), torch.randn(2, 7, D)
    mask = causal_mask(5, 5)
    torch.testing.assert_close(grouped.self_attention(x, mask), full.self_attention(x, mask))
    torch.testing.assert_close(
        grouped.cross_attention(x, memory), full.cross_attention(x, memory), **TOL
    )


def test_grouped_query_attention_with_as_many_kv_heads_as_heads_is_standard_attention() -> None:
    torch.manual_seed(4)
    standard = MultiHeadAttention(LayerSpec(16, 4, 32)).eval()
    same = MultiHeadAttention(LayerSpec(16, 4, 32, num_kv_heads=4)).eval()
    same.load_state_dict(standard.state_dict())
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(same.self_attention(x), standard.self_attention(x), atol=0, rtol=0)


@pytest.mark.parametrize("masked", [False, True])
def test_fused_grouped_attention_equals_the_written_out_one(masked: bool) -> None:
    torch.manual_seed(5)
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 1, 6, 8), torch.randn(2, 1, 6, 8)
    mask = causal_mask(6, 6) if masked else None
    written, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(fused_attention(q, k, v, mask), written, **TOL)
    reference, _ = scaled_dot_product_attention(
        q, repeat_kv_heads(k, 4), repeat_kv_heads(v, 4), mask
    )
    torch.testing.assert_close(written, reference, **TOL)


@torch.no_grad()
def test_the_cache_holds_only_the_kv_heads() -> None:
    model = tiny_model(num_kv_heads=1)  # multi-query: 2 heads share one K/V head
    src = torch.randint(4, VOCAB, (2, 5))
    src_mask = model.source_mask(src)
    cache = model.new_cache()
    model.decode(torch.full((2, 1), BOS), model.encode(src, src_mask), src_mask, cache)
    assert cache.self_attn[0].k.shape == (2, 1, 1, 16)  # (N, H_kv, T, d_k)
    assert cache.cross_attn[0].k.shape == (2, 1, 5, 16)


# ------------------------------------------------------------- every combination of switches


SWITCHES = list(
    itertools.product(
        ["post", "pre"],
        ["layernorm", "rmsnorm"],
        ["relu", "gelu", "swiglu"],
        ["sinusoidal", "learned", "rope"],
        [None, 1],  # num_kv_heads: as many as the heads, or one (multi-query)
    )
)


def tiny_model(fast: bool = True, **overrides: object) -> Transformer:
    """A tiny model in eval mode, with the fast paths (as decoding builds it) or without."""
    settings: dict[str, object] = dict(
        src_vocab_size=VOCAB,
        tgt_vocab_size=VOCAB,
        d_model=32,
        num_heads=2,
        d_ff=48,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dropout=0.0,
        max_positions=64,
    )
    settings.update(overrides)
    torch.manual_seed(0)
    return build_model(ModelConfig(**settings), fast).eval()


def switched(switches: tuple) -> Transformer:
    norm_position, norm, activation, positions, kv_heads = switches
    return tiny_model(
        norm_position=norm_position,
        norm=norm,
        activation=activation,
        positional_encoding=positions,
        num_kv_heads=kv_heads,
    )


def switch_id(switches: tuple) -> str:
    return "-".join(str(s) for s in switches).replace("None", "mha").replace("-1", "-mqa")


def padded_batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(6)
    src = torch.randint(4, VOCAB, (3, 7), generator=g)
    src[1, 5:], src[2, 3:] = PAD, PAD
    return src, torch.randint(4, VOCAB, (3, 6), generator=g)


@pytest.mark.parametrize("switches", SWITCHES, ids=switch_id)
@torch.no_grad()
def test_causal_padding_invariant_and_cached_for_every_combination(switches: tuple) -> None:
    model = switched(switches)
    src, tgt = padded_batch()
    logits = model(src, tgt)
    # Causality: changing the later target tokens leaves the earlier logits as they are.
    changed = tgt.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % (VOCAB - 4) + 4
    torch.testing.assert_close(model(src, changed)[:, :3], logits[:, :3], **TOL)
    # Padding invariance: more padding on the source changes nothing.
    more = torch.cat([src, torch.full((3, 3), PAD)], dim=1)
    torch.testing.assert_close(model(more, tgt), logits, **TOL)
    # The cache: one position at a time gives the logits of the whole.
    src_mask = model.source_mask(src)
    memory = model.encode(src, src_mask)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, t : t + 1], memory, src_mask, cache) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), logits, **TOL)


def parameters_by_formula(config: ModelConfig) -> int:
    """Count from the architecture: embeddings, attentions, feed-forward networks, norms."""
    c, D, V = config, config.d_model, config.src_vocab_size
    kv = (c.num_kv_heads or c.num_heads) * (D // c.num_heads)
    attention = D * (D + 2 * kv) + (D + 2 * kv) + D * D + D  # W^Q, W^K, W^V (+b), W^O (+b)
    gated = c.activation == "swiglu"  # W_1, W_3, W_2 without biases, or W_1, W_2 with theirs
    feed_forward = 3 * D * c.d_ff if gated else 2 * D * c.d_ff + c.d_ff + D
    norm = D if c.norm == "rmsnorm" else 2 * D  # gain (and bias)
    positions = 2 * c.max_positions * D if c.positional_encoding == "learned" else 0
    encoder = c.num_encoder_layers * (attention + feed_forward + 2 * norm)
    decoder = c.num_decoder_layers * (2 * attention + feed_forward + 3 * norm)
    final_norms = 2 * norm if c.norm_position == "pre" else 0
    return V * D + positions + encoder + decoder + final_norms  # one shared, tied embedding


@pytest.mark.parametrize("switches", SWITCHES, ids=switch_id)
def test_parameter_count_follows_the_formula(switches: tuple) -> None:
    model = switched(switches)
    config = ModelConfig(**{**model.config.__dict__, "share_embeddings": True})
    assert Transformer(config).num_parameters() == parameters_by_formula(config)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"num_kv_heads": 3}, "model.num_kv_heads"),  # 8 heads do not group by 3
        ({"num_kv_heads": 0}, "model.num_kv_heads"),
        ({"norm": "batchnorm"}, "model.norm"),
        ({"activation": "swish"}, "model.activation"),
        ({"positional_encoding": "rope", "d_model": 24, "num_heads": 8}, "model.positional"),
    ],
)
def test_impossible_switches_are_config_errors_naming_the_key(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        config_from_dict({"model": changes})


def test_gated_feed_forward_is_another_function_than_relu() -> None:
    torch.manual_seed(7)
    ff = SwiGLUFeedForward(8, 12)
    x = torch.randn(2, 8)
    relu_like = F.relu(x @ ff.linear1.weight.T) @ ff.linear2.weight.T
    assert not torch.allclose(ff(x), relu_like)
