"""training.tensorboard: a run's steps, validations, samples and attention in TensorBoard."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from tiny_runs import DATA, ROOT, error_line, tiny_config

from transformer.config import TrainingConfig

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

Cli = Callable[..., subprocess.CompletedProcess]
TRAIN_TAGS = {"train/loss", "train/lr", "train/grad_norm", "train/target_tokens_per_s",
              "train/skipped_steps"}  # fmt: skip
VALID_TAGS = {"valid/loss", "valid/perplexity", "valid/bleu", "valid/chrf"}
TEXT_TAG = "valid/samples/text_summary"
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def board_config(tmp_path: Path, **training: object) -> Path:
    """A tiny run that logs every 5 steps, validates every 10, and writes TensorBoard events."""
    values = {"tensorboard": True, "max_steps": 20, "log_every": 5, "eval_every": 10,
              "eval_bleu": True, "eval_samples": 2, "keep_best": 10}  # fmt: skip
    values.update(training)
    return tiny_config(tmp_path, training=values)


def read_events(run: Path) -> EventAccumulator:
    """Every event of the run's tensorboard/ folder, as TensorBoard reads them."""
    events = EventAccumulator(
        str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    )
    events.Reload()
    return events


def scalar_steps(events: EventAccumulator) -> dict[str, list[int]]:
    """Each scalar tag's steps, in the order the events hold them."""
    return {tag: [s.step for s in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_run_logs_each_log_step_and_each_validation_with_samples_and_attention(
    cli: Cli, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert cli("train", "--config", board_config(tmp_path), "--run-dir", run).returncode == 0
    events = read_events(run)
    steps = scalar_steps(events)
    assert set(steps) == TRAIN_TAGS | VALID_TAGS
    assert all(steps[tag] == [5, 10, 15, 20] for tag in TRAIN_TAGS), steps
    assert all(steps[tag] == [10, 20] for tag in VALID_TAGS), steps
    # the validation's numbers are those of metrics.jsonl
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s.value for s in events.Scalars("valid/loss")] == pytest.approx(
        [row["valid_loss"] for row in rows]
    )
    texts = events.Tensors(TEXT_TAG)
    assert [text.step for text in texts] == [10, 20]
    first_source = (DATA / "valid.en").read_text(encoding="utf-8").splitlines()[0].strip()
    assert first_source in texts[-1].tensor_proto.string_val[0].decode("utf-8")
    assert set(events.Tags()["images"]) == {"attention/sample_1", "attention/sample_2"}
    for tag in events.Tags()["images"]:
        images = events.Images(tag)
        assert [image.step for image in images] == [10, 20]
        assert all(image.encoded_image_string.startswith(b"\x89PNG") for image in images)


def test_a_resumed_run_appends_each_step_once_in_order(cli: Cli, tmp_path: Path) -> None:
    run, config = tmp_path / "run", board_config(tmp_path, max_steps=10, eval_every=5)
    assert cli("train", "--config", config, "--run-dir", run).returncode == 0
    resumed = cli("train", "--run-dir", run, "--resume", "--set", "training.max_steps=20")
    assert resumed.returncode == 0
    steps = scalar_steps(read_events(run))
    assert set(steps) == TRAIN_TAGS | VALID_TAGS
    assert all(tag_steps == [5, 10, 15, 20] for tag_steps in steps.values()), steps


@pytest.mark.slow
def test_what_a_run_logged_after_the_checkpoint_it_resumes_from_is_dropped(
    cli: Cli, tmp_path: Path
) -> None:
    run, config = tmp_path / "run", board_config(tmp_path, eval_every=5)
    assert cli("train", "--config", config, "--run-dir", run).returncode == 0
    # As if the run had died after step 15's events, with last.pt still at step 10:
    last = run / "checkpoints" / "last.pt"
    last.unlink()
    shutil.copyfile(run / "checkpoints" / "step_00000010.pt", last)
    resumed = cli("train", "--run-dir", run, "--resume", "--set", "training.eval_every=10")
    assert resumed.returncode == 0
    steps = scalar_steps(read_events(run))
    assert steps["valid/loss"] == [5, 10, 20]  # step 15 belonged to the lost part of the run
    assert steps["train/loss"] == [5, 10, 15, 20]
    assert [image.step for image in read_events(run).Images("attention/sample_1")] == [5, 10, 20]


@pytest.mark.slow
def test_with_two_processes_only_rank_0_writes_events(tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "transformer.cli.train",
               "--config", str(board_config(tmp_path)), "--run-dir", str(run)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((run / "tensorboard").iterdir())) == 1  # one event file: rank 0's
    steps = scalar_steps(read_events(run))
    assert all(steps[tag] == [5, 10, 15, 20] for tag in TRAIN_TAGS), steps


def test_without_the_tensorboard_package_training_stops_before_any_work(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("tensorboard", "torch.utils.tensorboard"):  # as if it were not installed
        monkeypatch.setitem(sys.modules, name, None)
    run = tmp_path / "run"
    result = cli("train", "--config", board_config(tmp_path), "--run-dir", run)
    line = error_line(result, "training.tensorboard", "pip install 'transformer[tensorboard]'")
    assert result.stderr.strip().splitlines() == [line]  # nothing was logged, so nothing done
    assert not run.exists()


@pytest.mark.slow
def test_without_matplotlib_the_numbers_and_samples_are_logged_and_a_line_says_why_no_images(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    hide = "import sys; sys.modules['matplotlib'] = None; "
    main = "from transformer.cli.train import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = ["--config", str(board_config(tmp_path)), "--run-dir", str(run)]
    result = subprocess.run(
        [sys.executable, "-c", hide + main, *args], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "transformer[plot]" in line]
    assert len(notes) == 1 and "no attention images" in notes[0], result.stderr
    events = read_events(run)
    assert set(scalar_steps(events)) == TRAIN_TAGS | VALID_TAGS
    assert [text.step for text in events.Tensors(TEXT_TAG)] == [10, 20]
    assert events.Tags()["images"] == []


def test_tensorboard_is_off_unless_asked_for() -> None:
    assert TrainingConfig().tensorboard is False


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_each_shipped_config_lists_training_tensorboard_off(path: Path) -> None:
    training = yaml.safe_load(path.read_text(encoding="utf-8"))["training"]
    assert training["tensorboard"] is False
