"""Run directories written by earlier versions keep working.

`tests/data/run_before_fused_projections/` is a small run trained by the code of commit
b739c3a, when attention kept W^Q, W^K and W^V as three separate layers (q_proj, k_proj,
v_proj); its `expected_*.de` files are what that code's transformer-translate printed with
--scores (--beam-size 1 and 3). Today's stacked `qkv_proj` takes the three when it loads.

`tests/data/run_before_the_house/` was trained (1,500 steps) and translated by commit 1dd2a65,
before the model became the paper's plain layers with the fast paths as one seam, and before
the package was regrouped: a model with the modern switches (pre-norm RMSNorm, SwiGLU, rotary
positions, grouped-query attention), whose config still holds the retired `model.pad_id: 0`.
It must translate as it did, with the fast paths and with the paper's layers alone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from transformer.decoding.translator import Translator
from transformer.training.checkpoint import load_checkpoint

OLD_RUN = Path(__file__).parent / "data" / "run_before_fused_projections"
HOUSE_RUN = Path(__file__).parent / "data" / "run_before_the_house"


@pytest.mark.parametrize(
    ("beam_size", "expected"), [(1, "expected_greedy.de"), (3, "expected_beam3.de")]
)
def test_a_run_written_before_the_projections_were_stacked_translates_as_it_did(
    beam_size: int, expected: str
) -> None:
    translator = Translator.from_run(OLD_RUN, device="cpu")
    decoding = dataclasses.replace(translator.config.decoding, beam_size=beam_size)
    lines = (OLD_RUN / "input.en").read_text(encoding="utf-8").splitlines()
    now = [nbest[0] for nbest in translator.translate(lines, decoding)]
    then = [line.split("\t") for line in (OLD_RUN / expected).read_text("utf-8").splitlines()]
    assert [t.text for t in now] == [text for text, _ in then]
    # Scores to float error: another CPU may round the last printed digit differently.
    assert [t.score for t in now] == pytest.approx([float(score) for _, score in then], abs=2e-3)


def test_the_old_checkpoint_really_has_separate_projections() -> None:
    # Guards the fixture: were it rewritten in today's layout, the test above would prove nothing.
    keys = load_checkpoint(OLD_RUN / "checkpoints" / "last.pt")["model"].keys()
    assert "encoder.layers.0.self_attn.q_proj.weight" in keys
    assert not any("qkv_proj" in key for key in keys)


@pytest.mark.parametrize("fast", [True, False], ids=["fast paths", "paper layers"])
@pytest.mark.parametrize("beam_size", [1, 3])
def test_a_run_written_before_the_house_was_rebuilt_translates_as_it_did(
    beam_size: int, fast: bool
) -> None:
    translator = Translator.from_run(HOUSE_RUN, device="cpu", fast=fast)
    decoding = dataclasses.replace(translator.config.decoding, beam_size=beam_size)
    lines = (HOUSE_RUN / "input.en").read_text(encoding="utf-8").splitlines()
    now = [nbest[0] for nbest in translator.translate(lines, decoding)]
    expected = (HOUSE_RUN / f"expected_beam{beam_size}.de").read_text("utf-8").splitlines()
    then = [line.split("\t") for line in expected]
    assert len(now) == len(then) == 40
    assert [t.text for t in now] == [text for text, _ in then]
    assert [t.score for t in now] == pytest.approx([float(score) for _, score in then], abs=2e-3)


def test_the_house_fixture_is_a_modern_model_with_the_retired_pad_id() -> None:
    # Guards the fixture: the switches are the code paths the rebuild moved.
    text = (HOUSE_RUN / "config.yaml").read_text(encoding="utf-8")
    for line in ("pad_id: 0", "positional_encoding: rope", "num_kv_heads: 2", "norm: rmsnorm"):
        assert line in text
