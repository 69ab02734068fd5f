"""The whole model both ways: the paper's layers and the fast paths give the same numbers.

`build_model(config, fast=False)` is the paper's model in PyTorch's plain layers;
`build_model(config)` swaps in the fast paths of `transformer.model.fast`. On the same weights,
with dropout off, the two give the same logits, loss and gradients for every model switch,
and the same translations; training takes the fast paths unless `training.fast` is false.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import Tensor, nn

import transformer.model.fast as fast_module
import transformer.training.loss as loss_module
from transformer.config import Config, ModelConfig, TrainingConfig
from transformer.data.corpus import EncodedCorpus
from transformer.decoding.search import beam_search, greedy_search
from transformer.decoding.translator import Translator
from transformer.model import ScaledDotProductAttention, Transformer, build_model
from transformer.model.attention import QKVProjection
from transformer.model.fast import (
    FAST_PATHS,
    FastAttention,
    FastLinear,
    FastQKVProjection,
    KeyedDropout,
    onednn_available,
)
from transformer.training.loss import TranslationLoss
from transformer.training.run import build_model as build_training_model
from transformer.training.trainer import Trainer

PAD, BOS, EOS = 0, 2, 3
VOCAB = 40
TRAINED_RUN = Path(__file__).parent / "data" / "run_before_fused_projections"
FAST_CLASSES = set(FAST_PATHS.values())

# The paper's model, then each switch alone, then a few together.
SWITCHES = [
    pytest.param({}, id="paper"),
    pytest.param({"positional_encoding": "learned"}, id="learned"),
    pytest.param({"positional_encoding": "rope"}, id="rope"),
    pytest.param({"norm_position": "pre"}, id="pre-norm"),
    pytest.param({"norm": "rmsnorm"}, id="rmsnorm"),
    pytest.param({"activation": "gelu"}, id="gelu"),
    pytest.param({"activation": "swiglu"}, id="swiglu"),
    pytest.param({"num_heads": 4, "num_kv_heads": 2}, id="grouped-query"),
    pytest.param({"tie_output_embeddings": False}, id="untied"),
    pytest.param({"share_embeddings": True}, id="shared-embeddings"),
    pytest.param(
        {
            "positional_encoding": "rope",
            "norm_position": "pre",
            "norm": "rmsnorm",
            "activation": "swiglu",
            "num_kv_heads": 1,
        },  # fmt: skip
        id="modern",
    ),
]


def model_config(**switches: object) -> ModelConfig:
    """A tiny 2+2-layer model with dropout off and `switches` changed."""
    values: dict[str, object] = dict(
        src_vocab_size=VOCAB,
        tgt_vocab_size=VOCAB,
        d_model=32,
        num_heads=2,
        d_ff=64,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dropout=0.0,
        max_positions=80,
    )
    values.update(switches)
    return ModelConfig(**values)  # type: ignore[arg-type]


def both_ways(config: ModelConfig) -> tuple[Transformer, Transformer]:
    """The plain and the fast model of `config`, holding the same weights."""
    torch.manual_seed(0)
    plain = build_model(config, fast=False)
    fast = build_model(config)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def batch(sentences: int, length: int) -> tuple[Tensor, Tensor, Tensor]:
    """Padded source, decoder input and target ids (sentences, length), lengths varying."""
    g = torch.Generator().manual_seed(length)
    src = torch.randint(4, VOCAB, (sentences, length), generator=g)
    tgt = torch.randint(4, VOCAB, (sentences, length + 1), generator=g)
    tgt[:, 0] = BOS
    for row in range(1, sentences, 2):  # every other sentence padded from a random point
        src[row, int(torch.randint(1, length, (1,), generator=g)) :] = PAD
        tgt[row, int(torch.randint(2, length + 1, (1,), generator=g)) :] = PAD
    return src, tgt[:, :-1], tgt[:, 1:]


def assert_close(got: Tensor, want: Tensor, name: str) -> None:
    scale = want.abs().max().item() or 1.0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale, msg=name)


# --------------------------------------------------------------------------------- the seam


def test_build_model_installs_the_fast_classes_and_fast_false_none() -> None:
    plain, fast = both_ways(model_config(positional_encoding="rope"))
    fast_kinds = {type(module) for module in fast.modules()}
    assert {FastLinear, FastQKVProjection, KeyedDropout, FastAttention} <= fast_kinds
    assert not fast_kinds & {nn.Linear, QKVProjection, nn.Dropout, ScaledDotProductAttention}
    plain_kinds = {type(module) for module in plain.modules()}
    assert not plain_kinds & FAST_CLASSES
    assert {nn.Linear, QKVProjection, nn.Dropout, ScaledDotProductAttention} <= plain_kinds


def test_both_ways_hold_the_same_parameters_under_the_same_names() -> None:
    plain, fast = both_ways(model_config(tie_output_embeddings=False))
    assert plain.state_dict().keys() == fast.state_dict().keys()
    torch.manual_seed(0)
    initialised_fast = build_model(plain.config)  # the same seed: the same initial weights
    for name, value in plain.state_dict().items():
        assert torch.equal(initialised_fast.state_dict()[name], value), name


@pytest.mark.parametrize("fast", [True, False])
def test_training_builds_the_fast_paths_unless_training_fast_is_false(
    fast: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = Config(
        model=model_config(dropout=0.1, attention_dropout=0.1),
        training=TrainingConfig(device="cpu", fast=fast, batch_tokens=4096, clip_grad_norm=0.0),
    )
    model = build_training_model(config, 1, torch.device("cpu"))
    kinds = {type(module) for module in model.modules()}
    assert bool(kinds & FAST_CLASSES) == fast
    assert not fast or not kinds & {nn.Linear, nn.Dropout, ScaledDotProductAttention}
    calls = {"projected loss": 0, "oneDNN": 0, "keyed mask": 0}

    def counted(name: str, function):  # type: ignore[no-untyped-def]
        def call(*args):  # type: ignore[no-untyped-def]
            calls[name] += 1
            return function(*args)

        return call

    monkeypatch.setattr(
        loss_module,
        "projected_label_smoothed_loss",
        counted("projected loss", loss_module.projected_label_smoothed_loss),
    )
    monkeypatch.setattr(fast_module, "onednn_matmul", counted("oneDNN", fast_module.onednn_matmul))
    monkeypatch.setattr(
        fast_module, "keyed_dropout_mask", counted("keyed mask", fast_module.keyed_dropout_mask)
    )
    pairs = training_corpus(32, 32)  # 1,024 tokens a side: enough rows for oneDNN
    cpu = torch.device("cpu")
    trainer = Trainer(config, model, None, pairs, None, tmp_path, cpu)  # type: ignore[arg-type]
    trainer.train_step([list(range(32))])
    assert calls["projected loss"] == int(fast)
    assert (calls["keyed mask"] > 0) == fast
    assert (calls["oneDNN"] > 0) == (fast and onednn_available())


def training_corpus(sentences: int, length: int) -> EncodedCorpus:
    """Random pairs of `length` ids a side (EOS last), as the training data reads them."""
    g = torch.Generator().manual_seed(1)
    sides = []
    for _ in range(2):
        ids = torch.randint(4, VOCAB, (sentences, length), generator=g)
        ids[:, -1] = EOS
        offsets = np.arange(sentences + 1) * length
        sides += [ids.flatten().numpy().astype(np.int32), offsets]
    texts = pa.chunked_array([["text"] * sentences])
    return EncodedCorpus(*sides, texts, texts)


# ------------------------------------------------------------------- the same numbers


@pytest.mark.parametrize("switches", SWITCHES)
@pytest.mark.parametrize(
    "shape", [(32, 32), (16, 64)], ids=["32-keys-written-out", "64-keys-fused"]
)  # both 1,024 rows of tokens, where oneDNN multiplies
def test_logits_loss_and_gradients_are_the_same_both_ways(
    switches: dict, shape: tuple[int, int]
) -> None:
    plain, fast = both_ways(model_config(**switches))
    src, tgt_in, tgt_out = batch(*shape)
    losses, grads = [], []
    for model, fast_objective in ((plain, False), (fast, True)):
        model.train()  # dropout is 0: training mode only switches the fast paths on
        losses.append(TranslationLoss(model, 0.1, PAD, fast=fast_objective)(src, tgt_in, tgt_out))
        losses[-1].backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    assert_close(fast(src, tgt_in), plain(src, tgt_in), "logits")
    assert_close(losses[1], losses[0], "loss")
    for name, grad in grads[0].items():
        assert_close(grads[1][name], grad, name)


@pytest.mark.parametrize("switches", SWITCHES[:3] + SWITCHES[-1:])
@torch.no_grad()
def test_decoding_with_the_cache_gives_the_same_logits_both_ways(switches: dict) -> None:
    # Decoding's own paths: a query a step, and beams that share their sentence's keys.
    plain, fast = (model.eval() for model in both_ways(model_config(**switches)))
    src, tgt_in, _ = batch(3, 6)
    beams = 2
    rows = torch.arange(3).repeat_interleave(beams)
    steps = []
    for model in (plain, fast):
        src_mask = model.source_mask(src)
        memory = model.encode(src, src_mask)
        cache = model.new_cache()
        logits = [model.decode(tgt_in[:, :1], memory, src_mask, cache)]
        cache.reorder(rows)
        logits += [model.decode(tgt_in[rows, t : t + 1], None, None, cache) for t in range(1, 6)]
        steps.append(torch.cat([logits[0][rows], *logits[1:]], dim=1))
    assert_close(steps[1], steps[0], "step logits")


# -------------------------------------------------------------------- the same translations


@pytest.fixture(scope="module")
def translators() -> tuple[Translator, Translator]:
    """The trained tiny run, loaded with and without the fast paths."""
    return (
        Translator.from_run(TRAINED_RUN, "last", device="cpu", fast=False),
        Translator.from_run(TRAINED_RUN, "last", device="cpu", fast=True),
    )


def test_a_translator_loads_the_model_it_is_asked_for(translators) -> None:  # type: ignore[no-untyped-def]
    plain, fast = translators
    assert not {type(module) for module in plain.model.modules()} & FAST_CLASSES
    assert {type(module) for module in fast.model.modules()} & FAST_CLASSES


@pytest.mark.parametrize("beam_size", [1, 4])
def test_a_trained_run_translates_the_same_both_ways(translators, beam_size: int) -> None:  # type: ignore[no-untyped-def]
    plain, fast = translators
    lines = (TRAINED_RUN / "input.en").read_text(encoding="utf-8").splitlines()
    decoding = dataclasses.replace(plain.config.decoding, beam_size=beam_size, nbest=beam_size)
    outputs = [translator.translate(lines, decoding) for translator in (plain, fast)]
    for reference, fast_nbest in zip(*outputs, strict=True):
        assert [t.text for t in fast_nbest] == [t.text for t in reference]
        assert [t.score for t in fast_nbest] == pytest.approx([t.score for t in reference])


@torch.no_grad()
def test_greedy_and_beam_search_find_the_same_hypotheses_both_ways(translators) -> None:  # type: ignore[no-untyped-def]
    plain, fast = translators
    lines = (TRAINED_RUN / "input.en").read_text(encoding="utf-8").splitlines()
    ids = [plain.tokenizers.src.encode(line) + [EOS] for line in lines]
    src = torch.full((len(ids), max(map(len, ids))), PAD)
    for row, sentence in enumerate(ids):
        src[row, : len(sentence)] = torch.tensor(sentence)
    for search in (
        lambda model: greedy_search(model, src, 1.5, 5),
        lambda model: beam_search(model, src, 5, 1.5, 5, nbest=5),
    ):
        reference, found = search(plain.model), search(fast.model)
        for want, got in zip(reference, found, strict=True):
            assert [h.tokens for h in got] == [h.tokens for h in want]
            assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
