"""Masks, the written-out attention, `MultiHeadAttention` against PyTorch's own and against the
formula with rotary positions, and the attention fast paths against the written-out formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer.model.attention import (
    AttentionRecorder,
    MultiHeadAttention,
    ScaledDotProductAttention,
    causal_mask,
    fused_attention,
    padding_mask,
    scaled_dot_product_attention,
)
from transformer.model.cache import KVCache
from transformer.model.fast import FastAttention, install_fast_paths, written_out_is_faster
from transformer.model.spec import LayerSpec

D_MODEL, NUM_HEADS = 32, 4
TOL = {"atol": 1e-5, "rtol": 1e-5}


def make_pair(
    seed: int = 0, fast: bool = False
) -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    """Our attention (the paper's layers, or the fast ones) and torch's, holding the same
    (non-zero) weights and biases."""
    torch.manual_seed(seed)
    ours = MultiHeadAttention(LayerSpec(D_MODEL, NUM_HEADS, 4 * D_MODEL)).eval()
    if fast:
        install_fast_paths(ours)
    for p in ours.parameters():
        nn.init.normal_(p, std=0.2)
    theirs = nn.MultiheadAttention(D_MODEL, NUM_HEADS, batch_first=True).eval()
    with torch.no_grad():
        theirs.in_proj_weight.copy_(ours.qkv_proj.weight)  # [W^Q | W^K | W^V], as ours
        theirs.in_proj_bias.copy_(ours.qkv_proj.bias)
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
    return ours, theirs


def source_ids() -> torch.Tensor:
    """Three sentences of length 6, 4 and 2, padded with 0 to length 6."""
    return torch.tensor([[5, 6, 7, 8, 9, 4], [5, 6, 7, 8, 0, 0], [4, 3, 0, 0, 0, 0]])


# ------------------------------------------------------------------------------------ masks


def test_padding_mask_marks_real_tokens_with_shape_b_1_1_s() -> None:
    ids = source_ids()
    mask = padding_mask(ids, pad_id=0)
    assert mask.shape == (3, 1, 1, 6)
    assert mask.dtype == torch.bool
    assert torch.equal(mask[:, 0, 0], ids != 0)
    assert torch.equal(padding_mask(ids, pad_id=5)[:, 0, 0], ids != 5)


def test_causal_mask_is_lower_triangular_when_query_and_key_lengths_agree() -> None:
    mask = causal_mask(4, 4)
    assert mask.shape == (4, 4)
    assert mask.dtype == torch.bool
    for i in range(4):
        for j in range(4):
            assert bool(mask[i, j]) == (j <= i)


def test_causal_mask_with_cached_positions_lets_new_queries_see_the_whole_past() -> None:
    # 2 new queries after 3 cached positions: they are positions 3 and 4 of 5.
    mask = causal_mask(2, 5)
    expected = torch.tensor([[True, True, True, True, False], [True, True, True, True, True]])
    assert torch.equal(mask, expected)
    assert causal_mask(1, 7).all()


def test_masks_are_pure_and_follow_the_input_device() -> None:
    ids = source_ids()
    before = ids.clone()
    assert torch.equal(padding_mask(ids, 0), padding_mask(ids, 0))
    assert torch.equal(ids, before)
    assert torch.equal(causal_mask(3, 5), causal_mask(3, 5))
    # The meta device stands in for an accelerator: the mask must be built where the input is.
    assert padding_mask(ids.to("meta"), 0).device.type == "meta"
    assert causal_mask(3, 5, device=torch.device("meta")).device.type == "meta"


# --------------------------------------------------------- written-out vs fused attention


def random_qkv(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (2, 4, 5, 8), k and v (2, 4, 6, 8)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, 5, 8, generator=g)
    k = torch.randn(2, 4, 6, 8, generator=g)
    v = torch.randn(2, 4, 6, 8, generator=g)
    return q, k, v


@pytest.mark.parametrize("mask_kind", ["none", "padding", "causal", "both"])
def test_written_out_attention_equals_fused_attention(mask_kind: str) -> None:
    q, k, v = random_qkv()
    pad = padding_mask(torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]), 0)  # (2,1,1,6)
    causal = causal_mask(5, 6)
    mask = {"none": None, "padding": pad, "causal": causal, "both": pad & causal}[mask_kind]
    written, weights = scaled_dot_product_attention(q, k, v, mask)
    fused = fused_attention(q, k, v, mask)
    torch.testing.assert_close(written, fused, **TOL)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 5), **TOL)
    if mask is not None:
        assert (weights.masked_select(~mask.expand_as(weights)) == 0).all()


def test_written_out_attention_is_softmax_of_scaled_scores() -> None:
    q, k, v = random_qkv(1)
    out, weights = scaled_dot_product_attention(q, k, v)
    expected_weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(weights, expected_weights, **TOL)
    torch.testing.assert_close(out, expected_weights @ v, **TOL)


def test_fully_masked_row_gives_zeros_not_nan_in_both_paths() -> None:
    q, k, v = random_qkv(2)
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[2] = False  # query 2 may attend nothing
    written, weights = scaled_dot_product_attention(q, k, v, mask)
    fused = fused_attention(q, k, v, mask)
    for out in (written, fused, weights):
        assert not out.isnan().any()
    assert (written[:, :, 2] == 0).all()
    assert (weights[:, :, 2] == 0).all()
    torch.testing.assert_close(written, fused, **TOL)


@pytest.mark.parametrize("need_weights", [False, True])
def test_attention_dropout_only_acts_in_training(need_weights: bool) -> None:
    q, k, v = random_qkv(3)
    layer = ScaledDotProductAttention(dropout=0.5).eval()
    eval_out, _ = layer(q, k, v, need_weights=need_weights)
    plain, _ = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(eval_out, plain, **TOL)
    torch.manual_seed(0)
    train_out, _ = layer.train()(q, k, v, need_weights=need_weights)
    assert not torch.allclose(train_out, plain)


# -------------------------------------------------------------- against nn.MultiheadAttention


def run_ours(
    ours: MultiHeadAttention,
    query: torch.Tensor,
    memory: torch.Tensor | None,
    mask: torch.Tensor | None,
    need_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Our self-attention over `query` (memory None) or cross-attention to `memory`: its
    output and, when asked for, its weights."""
    recorder = AttentionRecorder() if need_weights else None
    if memory is None:
        out = ours.self_attention(query, mask, recorder=recorder)
    else:
        out = ours.cross_attention(query, memory, mask, recorder=recorder)
    return out, (recorder[ours] if recorder is not None else None)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("need_weights", [False, True])
def test_self_attention_with_padding_equals_torch_multihead_attention(
    need_weights: bool, fast: bool
) -> None:
    ours, theirs = make_pair(fast=fast)
    ids = source_ids()
    x = torch.randn(3, 6, D_MODEL)
    out, weights = run_ours(ours, x, None, padding_mask(ids, 0), need_weights)
    expected, expected_weights = theirs(
        x, x, x, key_padding_mask=ids == 0, need_weights=True, average_attn_weights=False
    )
    if need_weights:
        torch.testing.assert_close(weights, expected_weights, **TOL)
    torch.testing.assert_close(out, expected, **TOL)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("need_weights", [False, True])
def test_causal_self_attention_equals_torch_multihead_attention(
    need_weights: bool, fast: bool
) -> None:
    ours, theirs = make_pair(1, fast)
    x = torch.randn(2, 5, D_MODEL)
    out, weights = run_ours(ours, x, None, causal_mask(5, 5), need_weights)
    expected, expected_weights = theirs(
        x, x, x, attn_mask=~causal_mask(5, 5), need_weights=True, average_attn_weights=False
    )
    if need_weights:
        torch.testing.assert_close(weights, expected_weights, **TOL)
    torch.testing.assert_close(out, expected, **TOL)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("need_weights", [False, True])
def test_cross_attention_with_padding_equals_torch_multihead_attention(
    need_weights: bool, fast: bool
) -> None:
    ours, theirs = make_pair(2, fast)
    ids = source_ids()
    memory = torch.randn(3, 6, D_MODEL)
    query = torch.randn(3, 4, D_MODEL)
    out, weights = run_ours(ours, query, memory, padding_mask(ids, 0), need_weights)
    expected, expected_weights = theirs(
        query,
        memory,
        memory,
        key_padding_mask=ids == 0,
        need_weights=True,
        average_attn_weights=False,
    )
    if need_weights:
        torch.testing.assert_close(weights, expected_weights, **TOL)
    torch.testing.assert_close(out, expected, **TOL)


def test_self_attention_in_one_matmul_equals_projecting_queries_and_keys_apart() -> None:
    # The self-attention path (Q, K, V from one matmul) and the cross-attention path (Q from
    # the query, K and V from the memory) are the same formula.
    ours, _ = make_pair(3)
    x = torch.randn(2, 5, D_MODEL)
    mask = causal_mask(5, 5)
    torch.testing.assert_close(ours.self_attention(x, mask), ours.cross_attention(x, x, mask))


@pytest.mark.parametrize("fast", [False, True])
def test_query_rows_must_be_a_multiple_of_the_key_rows(fast: bool) -> None:
    ours, _ = make_pair(fast=fast)
    with pytest.raises(ValueError, match="cannot share"):
        ours.cross_attention(torch.randn(2, 3, D_MODEL), torch.randn(3, 3, D_MODEL))


def test_attention_weights_are_those_of_the_written_out_formula() -> None:
    ours, _ = make_pair(4)
    x = torch.randn(2, 5, D_MODEL)
    recorder = AttentionRecorder()
    ours.self_attention(x, causal_mask(5, 5), recorder=recorder)
    q, k, _ = (ours.split_heads(part) for part in ours.qkv_proj(x).chunk(3, dim=-1))
    _, expected = scaled_dot_product_attention(q, k, k, causal_mask(5, 5))
    torch.testing.assert_close(recorder[ours], expected, **TOL)
    assert (recorder[ours].triu(diagonal=1) == 0).all()


@pytest.mark.parametrize("fast", [False, True])
@torch.no_grad()
def test_self_attention_cache_step_by_step_equals_causal_attention_of_the_whole(
    fast: bool,
) -> None:
    ours, _ = make_pair(5, fast)
    x = torch.randn(2, 6, D_MODEL)
    whole = ours.self_attention(x, causal_mask(6, 6))
    cache = KVCache()
    steps = [ours.self_attention(x[:, t : t + 1], None, cache) for t in range(6)]
    assert cache.length == 6
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, **TOL)


@pytest.mark.parametrize("fast", [False, True])
@torch.no_grad()
def test_cross_attention_cache_reuses_the_first_steps_keys_without_reading_the_memory(
    fast: bool,
) -> None:
    ours, _ = make_pair(6, fast)
    query, memory = torch.randn(2, 3, D_MODEL), torch.randn(2, 6, D_MODEL)
    cache = KVCache()
    first = ours.cross_attention(query[:, :1], memory, None, cache)
    later = ours.cross_attention(query[:, 1:], None, None, cache)  # memory not needed any more
    whole = ours.cross_attention(query, memory)
    torch.testing.assert_close(torch.cat([first, later], dim=1), whole, **TOL)


def test_checkpoints_with_separate_q_k_v_projections_load_into_the_stacked_one() -> None:
    ours, _ = make_pair(7)
    D = D_MODEL
    weight, bias = ours.qkv_proj.weight.detach(), ours.qkv_proj.bias.detach()
    old_layout = {
        "q_proj.weight": weight[:D].clone(),
        "q_proj.bias": bias[:D].clone(),
        "k_proj.weight": weight[D : 2 * D].clone(),
        "k_proj.bias": bias[D : 2 * D].clone(),
        "v_proj.weight": weight[2 * D :].clone(),
        "v_proj.bias": bias[2 * D :].clone(),
        "out_proj.weight": ours.out_proj.weight.detach().clone(),
        "out_proj.bias": ours.out_proj.bias.detach().clone(),
    }
    fresh = MultiHeadAttention(ours.spec).eval()
    fresh.load_state_dict(old_layout)  # strict: every key used, none missing
    x = torch.randn(2, 4, D_MODEL)
    torch.testing.assert_close(fresh.self_attention(x), ours.self_attention(x), **TOL)


# -------------------------------------------------------------- rotary positions (RoPE)


def rotated(x: torch.Tensor, first_position: int) -> torch.Tensor:
    """R(x): each pair of features (2i, 2i+1) of x (B, H, T, d_k) at position pos turned by
    pos · 10000^(-2i/d_k), written out from RoFormer's formula."""
    d_k = x.size(-1)
    out = torch.empty_like(x)
    for t in range(x.size(2)):
        for i in range(d_k // 2):
            angle = torch.tensor((first_position + t) / 10000 ** (2 * i / d_k))
            a, b = x[..., t, 2 * i], x[..., t, 2 * i + 1]
            out[..., t, 2 * i] = a * angle.cos() - b * angle.sin()
            out[..., t, 2 * i + 1] = a * angle.sin() + b * angle.cos()
    return out


def rope_attention(seed: int, fast: bool) -> MultiHeadAttention:
    """A rotary self-attention with random weights and biases (the paper's layers or fast)."""
    torch.manual_seed(seed)
    ours = MultiHeadAttention(LayerSpec(D_MODEL, NUM_HEADS, 4 * D_MODEL, rope=True)).eval()
    for p in ours.parameters():
        nn.init.normal_(p, std=0.2)
    return install_fast_paths(ours) if fast else ours


@pytest.mark.parametrize("fast", [False, True])
@torch.no_grad()
def test_rotary_self_attention_is_softmax_of_rotated_queries_times_rotated_keys_then_w_o(
    fast: bool,
) -> None:
    # softmax(R(q) R(k)ᵀ / √d_k) V W^O, from the layer's own weights: rotating the keys but not
    # the queries (or the other way round) would break it.
    ours = rope_attention(7, fast)
    x = torch.randn(2, 5, D_MODEL)
    mask = causal_mask(5, 5)
    W, b = ours.qkv_proj.weight, ours.qkv_proj.bias
    q, k, v = (ours.split_heads(t) for t in (x @ W.T + b).chunk(3, dim=-1))  # (B, H, T, d_k)
    d_k = D_MODEL // NUM_HEADS
    scores = rotated(q, 0) @ rotated(k, 0).transpose(-2, -1) / math.sqrt(d_k)
    weights = scores.masked_fill(~mask, -math.inf).softmax(-1)  # (B, H, T, T)
    heads = (weights @ v).transpose(1, 2).reshape(2, 5, D_MODEL)  # Concat(head_1..head_h)
    expected = heads @ ours.out_proj.weight.T + ours.out_proj.bias
    torch.testing.assert_close(ours.self_attention(x, mask), expected, **TOL)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("cached", [1, 6])
@torch.no_grad()
def test_rotary_scores_after_cached_positions_equal_the_unshifted_scores(
    cached: int, fast: bool
) -> None:
    # RoPE makes a score depend on the distance of query and key only: the same tokens after
    # `cached` positions (kept in the cache) score each other as they do at positions 0...
    ours = rope_attention(8, fast)
    x = torch.randn(2, 4, D_MODEL)
    q, k, _ = ours.project_self(x)  # positions 0..3
    cache = KVCache()
    ours.project_self(torch.randn(2, cached, D_MODEL), cache)  # positions 0..cached-1
    q_later, k_all, _ = ours.project_self(x, cache)  # positions cached..cached+3
    assert k_all.size(2) == cached + 4  # the cache grew: it holds every position's keys
    later = q_later @ k_all[:, :, cached:].transpose(-2, -1)  # (B, H, 4, 4)
    torch.testing.assert_close(later, q @ k.transpose(-2, -1), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(q_later, q, atol=1e-3)  # ... though each is rotated further


# ------------------------------------------------------------------- fast paths = reference


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("fast", [False, True])
def test_query_rows_sharing_key_rows_equal_repeating_the_keys(
    beams: int, need_weights: bool, fast: bool
) -> None:
    # The fast layer stacks the beams' queries (`shared_key_attention`); the paper's repeats
    # the keys, values and mask for each beam.
    q, k, v = random_qkv(5)  # q (2, 4, 5, 8), k and v (2, 4, 6, 8)
    q = torch.randn(2 * beams, 4, 5, 8)
    mask = padding_mask(torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]), 0)
    layer = (FastAttention if fast else ScaledDotProductAttention)().eval()
    out, weights = layer(q, k, v, mask, need_weights)
    rows = torch.arange(2).repeat_interleave(beams)
    expected, expected_weights = scaled_dot_product_attention(q, k[rows], v[rows], mask[rows])
    torch.testing.assert_close(out, expected, **TOL)
    if need_weights:
        torch.testing.assert_close(weights, expected_weights, **TOL)
    else:
        assert weights is None


@pytest.mark.parametrize("keys", [7, 40])
@pytest.mark.parametrize("queries", [1, 5, 40])
@pytest.mark.parametrize("training", [False, True])
def test_the_chosen_attention_path_equals_the_written_out_formula(
    queries: int, keys: int, training: bool
) -> None:
    torch.manual_seed(6)
    q, k, v = torch.randn(2, 4, queries, 8), torch.randn(2, 4, keys, 8), torch.randn(2, 4, keys, 8)
    mask = padding_mask(torch.tensor([[1] * keys, [1, 1, 1] + [0] * (keys - 3)]), 0)
    out, weights = FastAttention().train(training)(q, k, v, mask)
    assert weights is None
    torch.testing.assert_close(out, scaled_dot_product_attention(q, k, v, mask)[0], **TOL)


def test_the_written_out_path_is_chosen_on_a_cpu_for_few_keys_or_few_queries_at_inference():
    one, many = torch.zeros(2, 4, 1, 8), torch.zeros(2, 4, 64, 8)
    assert written_out_is_faster(one, one, training=True)  # few keys
    assert written_out_is_faster(many[:, :, :32], many[:, :, :32], training=True)
    assert written_out_is_faster(one, many, training=False)  # one query at inference
    assert not written_out_is_faster(one, many, training=True)
    assert not written_out_is_faster(many, many, training=False)
    assert not written_out_is_faster(many, many, training=True)


def test_the_layer_spec_needs_d_model_divisible_by_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        LayerSpec(30, 4, 64)


def test_fast_path_attention_gradients_equal_written_out_gradients() -> None:
    q, k, v = (t.requires_grad_() for t in random_qkv(4))
    mask = causal_mask(5, 6)
    grads = []
    for path in ("written", "fused"):
        for t in (q, k, v):
            t.grad = None
        if path == "written":
            out, _ = scaled_dot_product_attention(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        (out * torch.arange(out.numel()).view_as(out).sin()).sum().backward()
        grads.append([t.grad.clone() for t in (q, k, v)])
    for written, fused in zip(*grads, strict=True):
        torch.testing.assert_close(written, fused, **TOL)
