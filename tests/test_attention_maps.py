"""`Transformer.attention_maps`: every attention weight of the model, and what they must obey."""

from __future__ import annotations

import pytest
import torch

from transformer.config import ModelConfig
from transformer.model import AttentionMaps, AttentionRecorder, Transformer, build_model

PAD, BOS = 0, 2
TOL = {"atol": 1e-5, "rtol": 1e-5}


def tiny_model(fast: bool = True, **overrides: object) -> Transformer:
    """A 2+3-layer, 4-head, d_model 32 model in eval mode (with the fast paths, or without)."""
    settings: dict[str, object] = {
        "src_vocab_size": 20,
        "tgt_vocab_size": 20,
        "d_model": 32,
        "num_heads": 4,
        "d_ff": 64,
        "num_encoder_layers": 2,
        "num_decoder_layers": 3,
        "dropout": 0.0,
    }
    settings.update(overrides)
    torch.manual_seed(0)
    return build_model(ModelConfig(**settings), fast).eval()


SRC = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, PAD, PAD]])  # (B=2, S=5), the second padded
TGT = torch.tensor([[BOS, 11, 12, 13], [BOS, 14, 15, 16]])  # (B=2, T=4)


@pytest.fixture(scope="module")
def maps() -> AttentionMaps:
    with torch.no_grad():
        return tiny_model().attention_maps(SRC, TGT)


def test_maps_have_a_layer_batch_head_query_key_shape(maps: AttentionMaps) -> None:
    assert maps.encoder_self.shape == (2, 2, 4, 5, 5)  # (L_enc, B, H, S, S)
    assert maps.decoder_self.shape == (3, 2, 4, 4, 4)  # (L_dec, B, H, T, T)
    assert maps.cross.shape == (3, 2, 4, 4, 5)  # (L_dec, B, H, T, S)


def test_every_row_sums_to_one(maps: AttentionMaps) -> None:
    for weights in (maps.encoder_self, maps.decoder_self, maps.cross):
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]), **TOL)
        assert (weights >= 0).all()


def test_decoder_self_attention_is_zero_above_the_diagonal(maps: AttentionMaps) -> None:
    future = torch.ones(4, 4, dtype=torch.bool).triu(diagonal=1)
    assert (maps.decoder_self[..., future] == 0).all()
    assert (maps.decoder_self[..., ~future] > 0).all()


def test_padding_keys_get_zero_weight(maps: AttentionMaps) -> None:
    padding = SRC[1] == PAD  # the second sentence's last two positions
    assert (maps.encoder_self[:, 1, :, :, padding] == 0).all()
    assert (maps.cross[:, 1, :, :, padding] == 0).all()
    assert (maps.cross[:, 1, :, :, ~padding] > 0).all()


@torch.no_grad()
def test_the_maps_are_the_weights_multi_head_attention_returns(maps: AttentionMaps) -> None:
    model = tiny_model()
    src_mask = model.source_mask(SRC)
    x = model.encoder.positional(model.src_embed(SRC))  # the first layer's input (no dropout)
    recorder = AttentionRecorder()
    attention = model.encoder.layers[0].self_attn
    attention.self_attention(x, src_mask, recorder=recorder)
    torch.testing.assert_close(maps.encoder_self[0], recorder[attention], **TOL)


@pytest.mark.parametrize("fast", [True, False])
@torch.no_grad()
def test_the_maps_are_the_same_with_and_without_the_cache(maps: AttentionMaps, fast: bool) -> None:
    model = tiny_model(fast)
    src_mask = model.source_mask(SRC)
    memory = model.encode(SRC, src_mask)
    cache = model.new_cache()
    for t in range(TGT.size(1)):
        recorder = AttentionRecorder()
        model.decoder(model.tgt_embed(TGT[:, t : t + 1]), memory, src_mask, cache, recorder)
        for number, layer in enumerate(model.decoder.layers):
            self_row = recorder[layer.self_attn][:, :, 0]  # (B, H, t + 1)
            torch.testing.assert_close(self_row, maps.decoder_self[number, :, :, t, : t + 1], **TOL)
            cross_row = recorder[layer.cross_attn][:, :, 0]  # (B, H, S)
            torch.testing.assert_close(cross_row, maps.cross[number, :, :, t], **TOL)


@torch.no_grad()
def test_the_fast_and_the_plain_model_draw_the_same_maps(maps: AttentionMaps) -> None:
    plain = tiny_model(fast=False).attention_maps(SRC, TGT)
    for name in ("encoder_self", "decoder_self", "cross"):
        torch.testing.assert_close(getattr(plain, name), getattr(maps, name), **TOL)


@torch.no_grad()
def test_asking_for_the_maps_does_not_change_the_logits() -> None:
    model = tiny_model(norm_position="pre")
    logits = model(SRC, TGT)
    model.attention_maps(SRC, TGT)
    torch.testing.assert_close(model(SRC, TGT), logits, atol=0, rtol=0)
