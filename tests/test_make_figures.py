"""scripts/make_figures.py draws the walkthrough's pictures, with or without a trained run."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from tiny_runs import call_main, make_tiny_run, tiny_config

from transformer.cli.train import main as train_main

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


@pytest.fixture(scope="module")
def steps_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run that kept the checkpoints of steps 5 and 10."""
    directory = tmp_path_factory.mktemp("steps")
    config = tiny_config(directory, training={"max_steps": 10, "eval_every": 5, "keep_best": 5})
    assert call_main(train_main, ["--config", config, "--run-dir", directory / "run"]) == 0
    return directory / "run"


def test_it_draws_the_attention_over_training_from_the_steps_a_run_kept(
    make_figures: ModuleType, steps_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["--run", tmp_path / "missing", "--steps-run", steps_run, "--steps", "0,5,10"]
    assert make_figures.main([str(arg) for arg in [*args, "--output", out]]) == 0
    assert (out / "attention_over_training.png").read_bytes().startswith(b"\x89PNG")


def test_a_step_the_run_did_not_keep_is_one_error_naming_its_checkpoint_and_how_to_keep_it(
    make_figures: ModuleType, steps_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--run", str(tmp_path / "missing"), "--steps-run", str(steps_run), "--steps", "0,7"]
    args += ["--output", str(tmp_path / "out")]
    assert make_figures.main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert "step_00000007.pt is missing" in lines[0] and "training.keep_best" in lines[0]
    assert not (tmp_path / "out").exists()
