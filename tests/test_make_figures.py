"""scripts/make_figures.py draws the walkthrough's pictures, with or without a trained run."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from tiny_runs import make_tiny_run

pytest.importorskip("matplotlib")
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_figures.py"
FORMULA_FIGURES = {"positional_encoding.png", "masks.png", "learning_rate.png",
                   "label_smoothing.png", "rotary_positions.png"}  # fmt: skip
RUN_FIGURES = {"cross_attention.png", "decoder_self_attention.png", "encoder_self_attention.png"}


@pytest.fixture
def make_figures() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("make_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield module
    root.handlers[:], root.level = handlers, level


def test_it_draws_every_picture_from_a_trained_run(make_figures: ModuleType, tmp_path: Path):
    run = make_tiny_run(tmp_path / "run")
    assert make_figures.main(["--run", str(run), "--output", str(tmp_path / "out")]) == 0
    drawn = {path.name for path in (tmp_path / "out").iterdir()}
    assert drawn == FORMULA_FIGURES | RUN_FIGURES
    for name in drawn:
        assert (tmp_path / "out" / name).read_bytes().startswith(b"\x89PNG")


def test_without_a_run_it_draws_the_formulas_and_says_how_to_get_the_rest(
    make_figures: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--run", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]
    assert make_figures.main(args) == 0
    assert {path.name for path in (tmp_path / "out").iterdir()} == FORMULA_FIGURES
    assert "transformer-train --config configs/toy.yaml" in capsys.readouterr().err
