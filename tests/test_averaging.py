"""Checkpoint averaging: the result is the mean, keeps dtypes and ties, and translates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_runs import call_main, make_tiny_run, tiny_model

from transformer.cli.average import main
from transformer.decoding.translator import Translator
from transformer.model import Transformer
from transformer.training.averaging import average_checkpoints, select_best, select_last
from transformer.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


def save_model(path: Path, model: Transformer, step: int, bleu: float | None = None) -> Path:
    """Write a training-like checkpoint of `model`."""
    state: dict = {"model": model.state_dict(), "config": {"tag": step}, "step": step}
    if bleu is not None:
        state["metrics"] = {"loss": 1.0, "bleu": bleu, "chrf": 0.0}
    save_checkpoint(state, path)
    return path


def test_average_of_two_checkpoints_is_the_mean(tmp_path: Path) -> None:
    first, second = tiny_model(seed=1), tiny_model(seed=2)
    a = save_model(tmp_path / "a.pt", first, step=10)
    b = save_model(tmp_path / "b.pt", second, step=20)
    averaged = average_checkpoints([a, b])
    expected = {k: (v + second.state_dict()[k]) / 2 for k, v in first.state_dict().items()}
    assert averaged["model"].keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(averaged["model"][key], value, rtol=0, atol=1e-6)
    assert averaged["step"] == 20 and averaged["config"] == {"tag": 20}
    assert averaged["averaged_from"] == [str(a), str(b)]


def test_tied_output_projection_stays_tied_after_averaging(tmp_path: Path) -> None:
    paths = [save_model(tmp_path / f"{s}.pt", tiny_model(seed=s), step=s) for s in (1, 2, 3)]
    model = average_checkpoints(paths)["model"]
    assert model["output_proj.weight"] is model["tgt_embed.embedding.weight"]
    save_checkpoint({"model": model}, tmp_path / "avg.pt")
    reloaded = load_checkpoint(tmp_path / "avg.pt")["model"]
    assert reloaded["output_proj.weight"].data_ptr() == (
        reloaded["tgt_embed.embedding.weight"].data_ptr()
    )


def test_dtypes_are_kept_and_integer_tensors_come_from_the_last(tmp_path: Path) -> None:
    for step, scale in ((1, 1.0), (2, 3.0)):
        state = {
            "w": torch.full((3,), scale, dtype=torch.float16),
            "count": torch.tensor([step]),
        }
        save_checkpoint({"model": state, "step": step}, tmp_path / f"{step}.pt")
    model = average_checkpoints([tmp_path / "1.pt", tmp_path / "2.pt"])["model"]
    assert model["w"].dtype == torch.float16
    assert model["w"].tolist() == [2.0, 2.0, 2.0]
    assert model["count"].tolist() == [2]


def test_checkpoints_of_different_sizes_are_an_error_naming_both(tmp_path: Path) -> None:
    a = save_model(tmp_path / "small.pt", tiny_model(seed=1), step=1)
    b = save_model(tmp_path / "wide.pt", tiny_model(seed=1, d_ff=48), step=2)
    with pytest.raises(CheckpointError, match=r"small\.pt and .*wide\.pt.*shape"):
        average_checkpoints([a, b])


def make_step_run(tmp_path: Path) -> Path:
    """A tiny run directory with step checkpoints 10, 20, 30 holding BLEU 5, 9, 7."""
    run = make_tiny_run(tmp_path / "run")
    for step, bleu in ((10, 5.0), (20, 9.0), (30, 7.0)):
        path = run / "checkpoints" / f"step_{step:08d}.pt"
        save_model(path, tiny_model(seed=step), step, bleu)
    return run


def test_select_last_and_best_pick_by_step_and_by_stored_bleu(tmp_path: Path) -> None:
    run = make_step_run(tmp_path)
    assert [p.name for p in select_last(run, 2)] == ["step_00000020.pt", "step_00000030.pt"]
    assert [p.name for p in select_best(run, 2)] == ["step_00000020.pt", "step_00000030.pt"]
    assert [p.name for p in select_best(run, 1)] == ["step_00000020.pt"]
    with pytest.raises(CheckpointError, match="has 3 usable"):
        select_last(run, 4)


def test_cli_averages_the_last_n_and_the_result_translates(tmp_path: Path, capsys) -> None:
    run = make_step_run(tmp_path)
    assert call_main(main, ["--run", run, "--last", "2"]) == 0
    averaged = load_checkpoint(run / "checkpoints" / "averaged.pt")
    assert [Path(p).name for p in averaged["averaged_from"]] == [
        "step_00000020.pt",
        "step_00000030.pt",
    ]
    assert averaged["step"] == 30
    translator = Translator.from_run(run, "averaged", "cpu")
    outputs = translator.translate(["hello world", "", "the house"])
    assert len(outputs) == 3 and outputs[1][0].text == ""


def test_cli_asking_for_more_checkpoints_than_exist_is_one_error_line(
    tmp_path: Path, capsys
) -> None:
    run = make_step_run(tmp_path)
    assert call_main(main, ["--run", run, "--best", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "at most 3" in err
