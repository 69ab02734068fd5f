"""Training end to end on the shipped corpus: loss falls, checkpoints, resume, DDP, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from tiny_runs import ROOT, assert_one_line_error, tiny_config

from transformer.cli.train import main as train_main
from transformer.config import load_config
from transformer.training.checkpoint import load_checkpoint
from transformer.training.distributed import DistributedContext
from transformer.training.loss import label_smoothed_loss
from transformer.training.run import build_model, prepare_data, resolve_model_config
from transformer.training.trainer import Trainer


def model_parameters(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / name)["model"]


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_label_smoothed_loss_ignores_padding_and_matches_the_formula():
    logits = torch.randn(2, 3, 5)
    target = torch.tensor([[1, 2, 0], [3, 0, 0]])
    eps = 0.1
    log_probs = logits.log_softmax(-1)
    expected = 0.0
    for b, t in [(0, 0), (0, 1), (1, 0)]:
        smooth = -(log_probs[b, t].mean())
        expected += (1 - eps) * -log_probs[b, t, target[b, t]] + eps * smooth
    assert label_smoothed_loss(logits, target, eps, pad_id=0).item() == pytest.approx(
        float(expected), rel=1e-5
    )


def test_validation_loss_falls_on_the_shipped_corpus(tmp_path, capsys):
    config = tiny_config(tmp_path, training={"max_steps": 60, "eval_every": 20})
    run_dir = tmp_path / "run"
    assert train_main(["--config", str(config), "--run-dir", str(run_dir)]) == 0
    losses = [entry["valid_loss"] for entry in metrics(run_dir)]
    assert len(losses) == 3
    assert losses == sorted(losses, reverse=True)
    assert losses[-1] < losses[0] - 0.2
    # without training.eval_bleu the last line gives the best loss, not an empty summary
    assert f"done: 60 steps; best validation loss {losses[-1]:.3f}\n" in capsys.readouterr().err


def test_run_directory_is_self_contained(tmp_path):
    config = tiny_config(tmp_path, training={"max_steps": 6, "eval_every": 3, "eval_bleu": True})
    run_dir = tmp_path / "run"
    assert train_main(["--config", str(config), "--run-dir", str(run_dir)]) == 0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["src_vocab_size"] == saved["model"]["tgt_vocab_size"] > 0
    assert (run_dir / "tokenizer" / "spm.model").is_file()
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["best.pt", "last.pt", "step_00000003.pt", "step_00000006.pt"]
    assert [m["step"] for m in metrics(run_dir)] == [3, 6]
    assert all(m["bleu"] is not None and m["chrf"] is not None for m in metrics(run_dir))
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "scaler", "rng", "progress", "config"} <= set(last)
    assert last["progress"]["step"] == 6
    assert not list(run_dir.glob("checkpoints/.*"))  # no temporary files left behind


def test_keep_best_keeps_only_the_k_best_step_checkpoints(tmp_path):
    config = tiny_config(tmp_path, training={"max_steps": 12, "eval_every": 3, "keep_best": 2})
    run_dir = tmp_path / "run"
    assert train_main(["--config", str(config), "--run-dir", str(run_dir)]) == 0
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*.pt"))
    assert len(kept) == 2
    by_step = {m["step"]: -m["valid_loss"] for m in metrics(run_dir)}
    best_two = sorted(by_step, key=lambda s: -by_step[s])[:2]
    assert kept == sorted(f"step_{s:08d}.pt" for s in best_two)


def test_resumed_run_ends_with_the_parameters_of_an_uninterrupted_run(tmp_path):
    config = tiny_config(tmp_path, training={"max_steps": 10})
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_main(["--config", str(config), "--run-dir", str(straight)]) == 0
    args = ["--config", str(config), "--run-dir", str(split), "--set", "training.max_steps=4"]
    assert train_main(args) == 0
    args = ["--run-dir", str(split), "--resume", "--set", "training.max_steps=10"]
    assert train_main(args) == 0
    expected, resumed = model_parameters(straight), model_parameters(split)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every training of the test on one thread, in this process and in its subprocesses:
    sums split among different numbers of threads may round differently."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_run_killed_with_sigkill_and_resumed_equals_an_uninterrupted_run(tmp_path):
    steps = 60
    config = tiny_config(
        tmp_path,
        model={"d_model": 64, "d_ff": 256, "num_encoder_layers": 2, "num_decoder_layers": 2},
        training={"max_steps": steps, "save_every": 5},
    )
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert train_main(["--config", str(config), "--run-dir", str(straight)]) == 0
    command = [sys.executable, "-m", "transformer.cli.train", "--config", str(config)]
    process = subprocess.Popen(
        command + ["--run-dir", str(killed)], stderr=subprocess.DEVNULL, env=_env()
    )
    last = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert load_checkpoint(last)["step"] < steps, "the run finished before it could be killed"
    assert train_main(["--run-dir", str(killed), "--resume"]) == 0
    expected, resumed = model_parameters(straight), model_parameters(killed)
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_ddp_with_two_gloo_processes_writes_one_set_of_checkpoints(tmp_path):
    config = tiny_config(tmp_path, training={"max_steps": 6, "eval_every": 3})
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "transformer.cli.train",
        "--config",
        str(config),
        "--run-dir",
        str(run_dir),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=240, env=_env(), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [m["step"] for m in metrics(run_dir)] == [3, 6]
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 6
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert log.count("training stopped") == 1
    assert "2 process(es)" in log


# ----------------------------------------------------------------------------- bad input


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = train_main(argv)
    err = capsys.readouterr().err
    return code, err


def test_missing_config_file_is_a_one_line_error(tmp_path, capsys):
    code, err = run_cli(["--config", str(tmp_path / "nope.yaml")], capsys)
    assert_one_line_error(code, err, "nope.yaml", "not found")


def test_yaml_syntax_error_names_the_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  d_model: 32\n  num_heads: [2\n", encoding="utf-8")
    code, err = run_cli(["--config", str(path), "--run-dir", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "broken.yaml", "line")


def test_unknown_key_in_override_suggests_the_right_one(tmp_path, capsys):
    config = tiny_config(tmp_path)
    argv = ["--config", str(config), "--run-dir", str(tmp_path / "r"), "--set", "training.lrr=1"]
    code, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "training.lrr", "did you mean 'lr'")


def test_misaligned_data_files_name_both_files_and_counts(tmp_path, capsys):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n", encoding="utf-8")
    (tmp_path / "a.de").write_text("eins\nzwei\n", encoding="utf-8")
    config = tiny_config(
        tmp_path,
        data={"train": {"src_path": str(tmp_path / "a.en"), "tgt_path": str(tmp_path / "a.de")}},
    )
    code, err = run_cli(["--config", str(config), "--run-dir", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "a.en", "a.de", "3", "2")


def test_training_set_empty_after_filtering_is_an_error(tmp_path, capsys):
    config = tiny_config(tmp_path, data={"max_length": 1})
    code, err = run_cli(["--config", str(config), "--run-dir", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "data.train", "max_length")


def test_existing_run_is_refused_without_resume_and_left_intact(tmp_path, capsys):
    config = tiny_config(tmp_path, training={"max_steps": 2})
    run_dir = tmp_path / "run"
    assert train_main(["--config", str(config), "--run-dir", str(run_dir)]) == 0
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()
    code, err = run_cli(["--config", str(config), "--run-dir", str(run_dir)], capsys)
    assert_one_line_error(code, err, str(run_dir), "--resume")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_truncated_checkpoint_on_resume_is_a_one_line_error(tmp_path, capsys):
    config = tiny_config(tmp_path, training={"max_steps": 2})
    run_dir = tmp_path / "run"
    assert train_main(["--config", str(config), "--run-dir", str(run_dir)]) == 0
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    truncated = last.read_bytes()
    capsys.readouterr()
    code, err = run_cli(["--run-dir", str(run_dir), "--resume"], capsys)
    assert_one_line_error(code, err, "last.pt", "corrupted or truncated")
    assert last.read_bytes() == truncated


def test_resume_without_a_run_is_an_error(tmp_path, capsys):
    code, err = run_cli(["--run-dir", str(tmp_path / "none"), "--resume"], capsys)
    assert_one_line_error(code, err, "--resume", "last.pt")


def test_max_time_minutes_stops_training_early(tmp_path):
    config = tiny_config(tmp_path, training={"max_steps": 10_000, "max_time_minutes": 1e-6})
    run_dir = tmp_path / "run"
    assert train_main(["--config", str(config), "--run-dir", str(run_dir)]) == 0
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 1
    assert state["progress"]["train_seconds"] > 0


def test_the_library_seeds_torch_in_one_place():
    sources = (ROOT / "transformer").rglob("*.py")
    calls = {p.relative_to(ROOT).as_posix(): p.read_text().count("manual_seed(") for p in sources}
    assert {path: count for path, count in calls.items() if count} == {
        "transformer/training/run.py": 1
    }


def tiny_trainer(tmp_path: Path, reuse_tokenizer: bool = False, **sections: dict) -> Trainer:
    """A Trainer on the CPU for `tiny_config(tmp_path, **sections)` (tokenizer in tmp_path/run)."""
    config = load_config(tiny_config(tmp_path, **sections))
    data = prepare_data(config, tmp_path / "run", DistributedContext(), resume=reuse_tokenizer)
    config = resolve_model_config(config, data.tokenizers)
    model = build_model(config, config.training.seed, torch.device("cpu"))
    return Trainer(
        config, model, data.tokenizers, data.train, None, tmp_path / "run", torch.device("cpu")
    )


def test_accumulated_batches_give_the_gradient_of_one_batch_holding_them_all(tmp_path):
    def gradients_of_first_step(trainer: Trainer, batches: list[list[int]]) -> dict:
        grads = {}

        def record_then_step(*args, **kwargs):
            grads.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()})

        trainer.optimizer.step = record_then_step
        trainer.train_step(batches)
        return grads

    sections = {"model": {"dropout": 0.0}, "training": {"clip_grad_norm": 0.0}}
    first = tiny_trainer(tmp_path, **sections)
    second = tiny_trainer(tmp_path, reuse_tokenizer=True, **sections)
    width = {
        len(first.train_data.collate(batch, 0).src[0]): batch for batch in first.sampler.batches(0)
    }
    a, b = width[min(width)], width[max(width)]  # joined, the shorter one is padded
    accumulated = gradients_of_first_step(first, [a, b])
    together = gradients_of_first_step(second, [a + b])
    assert accumulated.keys() == together.keys()
    for name, grad in together.items():
        assert torch.allclose(accumulated[name], grad, rtol=1e-4, atol=1e-7), name
