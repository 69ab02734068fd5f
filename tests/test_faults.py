"""What happens when things go wrong: the commands as a user runs them, on small runs.

Each test states a promise of docs/faults.md ("What happens when things go wrong"): a failed
command leaves every file as it was and says why in one `error:` line (exit code 2);
an output is never the same file as an input; an interrupted training saves where it is
and says how to continue; a diverging training stops and saves nothing non-finite; a run
directory is used by one training at a time; resuming checks everything before writing.
"""

from __future__ import annotations

import ast
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from tiny_runs import ENV, ROOT, error_line, snapshot, tiny_config

from transformer.cli.train import main as train_main
from transformer.config import load_config
from transformer.files import FileError, atomic_write
from transformer.training.checkpoint import load_checkpoint
from transformer.training.lock import LOCK_FILE


def command(program: str, *args: object) -> subprocess.CompletedProcess:
    """Run `python -m transformer.cli.<program> ARGS` as a user would, capturing its output."""
    argv = [sys.executable, "-m", f"transformer.cli.{program}", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=240)


def log_lines(run_dir: Path) -> list[str]:
    return (run_dir / "train.log").read_text(encoding="utf-8").splitlines()


def finite(state: dict) -> bool:
    return all(t.isfinite().all() for t in state["model"].values() if t.is_floating_point())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained for 6 steps, validated at 3 and 6: last.pt, best.pt, step_*.pt."""
    base = tmp_path_factory.mktemp("trained")
    config = tiny_config(base, training={"max_steps": 6, "eval_every": 3})
    run_dir = base / "run"
    assert train_main(["--config", str(config), "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run, for a test to change."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "input.en"
    path.write_text("how are you\ngood night\n", encoding="utf-8")
    return path


def test_translation_failing_to_load_the_model_leaves_an_existing_output_as_it_was(
    run: Path, text_file: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.de"
    output.write_text("yesterday's translations\n", encoding="utf-8")
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:500])
    result = command("translate", "--run", run, "--checkpoint", "last", "--input", text_file,
                     "--output", output)  # fmt: skip
    error_line(result, "last.pt")
    assert output.read_text(encoding="utf-8") == "yesterday's translations\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.en", "out.de", "run"]


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_output_that_is_the_input_by_another_name_is_refused(
    cli, run: Path, text_file: Path, tmp_path: Path, link: str
) -> None:
    other = tmp_path / "other-name.en"
    (os.symlink if link == "symlink" else os.link)(text_file, other)
    before = text_file.read_bytes()
    result = cli("translate", "--run", run, "--input", text_file, "--output", other)
    error_line(result, "same file", str(other), str(text_file))
    assert text_file.read_bytes() == before


def test_evaluate_refuses_to_write_its_output_over_a_reference(
    cli, run: Path, tmp_path: Path
) -> None:
    source = tmp_path / "src.en"
    source.write_text("how are you\n", encoding="utf-8")
    reference = tmp_path / "ref.de"
    reference.write_text("wie geht es dir\n", encoding="utf-8")
    os.link(reference, tmp_path / "hyp.de")
    result = cli("evaluate", "--run", run, "--source", source, "--reference", reference,
                     "--output", tmp_path / "hyp.de")  # fmt: skip
    error_line(result, "same file", "--reference")
    assert reference.read_text(encoding="utf-8") == "wie geht es dir\n"


def test_average_refuses_to_write_over_one_of_its_inputs(cli, run: Path) -> None:
    step = sorted((run / "checkpoints").glob("step_*.pt"))[0]
    before = step.read_bytes()
    result = cli("average", "--run", run, "--last", 2, "--output", step)
    error_line(result, "same file", step.name)
    assert step.read_bytes() == before


@pytest.mark.parametrize("program", ["translate", "evaluate", "average"])
def test_a_full_disk_is_one_error_line_naming_the_file(
    cli, program: str, run: Path, text_file: Path
) -> None:
    args = {
        "translate": ["--run", run, "--input", text_file],
        "evaluate": ["--run", run, "--source", text_file, "--reference", text_file],
        "average": ["--run", run, "--last", 2],
    }[program]
    result = cli(program, *args, "--output", "/dev/full")
    error_line(result, "/dev/full", "No space left on device")


def test_a_full_disk_behind_standard_output_is_one_error_line(run: Path) -> None:
    with open("/dev/full", "w") as full:
        argv = [sys.executable, "-m", "transformer.cli.translate", "--run", str(run)]
        result = subprocess.run(
            argv + ["--text", "how are you"], stdout=full, stderr=subprocess.PIPE, text=True,
            env=ENV, timeout=240,
        )  # fmt: skip
    error_line(result, "standard output", "No space left on device")


@pytest.mark.parametrize("where", ["a missing directory", "a path through a file"])
def test_an_output_that_cannot_be_created_names_the_path_and_the_reason(
    cli, run: Path, text_file: Path, where: str
) -> None:
    output = text_file.parent / ("missing/out.de" if where == "a missing directory" else
                                 "input.en/out.de")  # fmt: skip
    result = cli("translate", "--run", run, "--input", text_file, "--output", output)
    reason = "No such file or directory" if where == "a missing directory" else "Not a directory"
    error_line(result, str(output), reason)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory holding out.de, mounted read-only (skipped where mounting is not allowed)."""
    source, mount = tmp_path / "source", tmp_path / "read-only"
    source.mkdir()
    mount.mkdir()
    (source / "out.de").write_text("kept\n", encoding="utf-8")
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0 or os.access(mount, os.W_OK) and _writable(mount):
        subprocess.run(["umount", str(mount)], capture_output=True)
        pytest.skip("cannot mount a read-only directory here")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def _writable(directory: Path) -> bool:
    try:
        (directory / ".probe").touch()
    except OSError:
        return False
    (directory / ".probe").unlink()
    return True


def test_an_output_in_a_read_only_directory_is_one_error_line(
    run: Path, text_file: Path, read_only_dir: Path
) -> None:
    output = read_only_dir / "out.de"
    result = command("translate", "--run", run, "--input", text_file, "--output", output)
    error_line(result, str(output), "Read-only file system")
    assert output.read_text(encoding="utf-8") == "kept\n"


@pytest.mark.parametrize(
    ("code", "reason"),
    [(errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied")],
)
def test_operating_system_errors_while_writing_become_file_errors_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, reason: str
) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code), str(tmp_path / ".out.txt.x.tmp"))

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with (
        pytest.raises(FileError, match=f"cannot write {target}: {reason}"),
        atomic_write(target) as handle,
    ):
        handle.write(b"new")
    assert target.read_text(encoding="utf-8") == "old"


def test_a_disk_filling_up_during_a_checkpoint_keeps_the_old_one_and_stops_training(
    run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    checkpoints = run / "checkpoints"
    before = snapshot(checkpoints)

    def full_disk(state: dict, handle) -> None:
        handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    args = ["--run-dir", str(run), "--resume", "--set", "training.max_steps=8"]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert "error: cannot write " in err and "last.pt: No space left on device" in err
    assert "Traceback" not in err
    assert snapshot(checkpoints) == before  # no temporary files, the old checkpoints intact
    assert not (run / LOCK_FILE).exists()


def test_a_failed_new_run_leaves_no_run_directory_behind(cli, tmp_path: Path) -> None:
    config = tiny_config(tmp_path, model={"share_embeddings": True}, tokenizer={"joint": False})
    run_dir = tmp_path / "runs" / "new"
    result = cli("train", "--config", config, "--run-dir", run_dir)
    error_line(result, "share_embeddings")
    assert not (tmp_path / "runs").exists()


def test_a_run_directory_that_is_a_file_is_one_error_line(cli, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "run"
    not_a_dir.write_text("a file", encoding="utf-8")
    result = cli("train", "--config", tiny_config(tmp_path), "--run-dir", not_a_dir)
    error_line(result, str(not_a_dir), "not a directory")
    assert not_a_dir.read_text(encoding="utf-8") == "a file"


def start_training(*args: object) -> subprocess.Popen:
    """The training as a terminal starts it: with SIGINT's default action even where the test
    runs in the background (`cmd &` in a script ignores SIGINT, and the training keeps that)."""
    argv = [sys.executable, "-m", "transformer.cli.train", *map(str, args)]
    return subprocess.Popen(
        argv,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_steps(run_dir: Path, process: subprocess.Popen, steps: int = 2) -> None:
    """Wait until the training has logged `steps` steps (it logs every step)."""
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        log = run_dir / "train.log"
        if log.exists() and log.read_text(encoding="utf-8").count(" epoch ") >= steps:
            return
        time.sleep(0.02)
    raise AssertionError("the training did not start")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_training_saves_its_step_says_how_to_resume_and_resumes_exactly(
    tmp_path: Path, signum: signal.Signals
) -> None:
    config = tiny_config(tmp_path, training={"max_steps": 100_000, "log_every": 1})
    run_dir = tmp_path / "interrupted"
    process = start_training("--config", config, "--run-dir", run_dir)
    wait_for_steps(run_dir, process)
    assert (run_dir / LOCK_FILE).read_text().split()[0] == str(process.pid)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum
    last_line = stderr.strip().splitlines()[-1]
    step = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
    name = signal.Signals(signum).name
    assert f"interrupted by {name}: saved step {step} in " in last_line
    assert last_line.endswith(f"resume with: transformer-train --run-dir {run_dir} --resume")
    assert f"stopped at step {step} " in log_lines(run_dir)[-1]
    assert log_lines(run_dir)[-1].endswith(f"interrupted by {name}")
    assert not (run_dir / LOCK_FILE).exists()

    target = step + 3
    resume = ["--run-dir", str(run_dir), "--resume", "--set", f"training.max_steps={target}"]
    assert train_main(resume) == 0
    straight = tmp_path / "straight"
    config = tiny_config(tmp_path, training={"max_steps": target, "log_every": 1})
    assert train_main(["--config", str(config), "--run-dir", str(straight)]) == 0
    expected = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    for key, value in expected.items():
        assert torch.equal(value, resumed[key]), key


def test_a_run_directory_with_a_config_but_no_checkpoint_starts_afresh(cli, run: Path) -> None:
    shutil.rmtree(run / "checkpoints")
    (run / "metrics.jsonl").unlink()
    result = cli("train", "--run-dir", run, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no checkpoint yet" in result.stderr and "starting afresh" in result.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6


def test_a_run_directory_in_use_by_a_live_training_is_refused(cli, run: Path) -> None:
    lock = run / LOCK_FILE
    lock.write_text(f"{os.getpid()} {socket.gethostname()}\n", encoding="utf-8")
    before = snapshot(run)
    result = cli("train", "--run-dir", run, "--resume", "--set", "training.max_steps=8")
    error_line(result, "in use by process", str(os.getpid()), str(lock))
    assert snapshot(run) == before


def test_a_stale_lock_of_a_process_that_is_gone_is_taken_over(cli, run: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    (run / LOCK_FILE).write_text(f"{gone} {socket.gethostname()}\n", encoding="utf-8")
    result = cli("train", "--run-dir", run, "--resume", "--set", "training.max_steps=8")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"taking over the stale lock {run / LOCK_FILE} of process {gone}" in result.stderr
    assert not (run / LOCK_FILE).exists()


# =========================================================================== resuming


def test_a_corrupted_checkpoint_on_resume_changes_nothing_in_the_run(cli, run: Path) -> None:
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    before = snapshot(run)
    result = cli("train", "--run-dir", run, "--resume", "--set", "training.max_steps=99")
    line = error_line(result, "last.pt", "corrupted or truncated", "start a new run")
    assert "--checkpoint" not in line  # transformer-train has no such flag
    assert snapshot(run) == before


class _RunsCode:
    """A pickle that, loaded in full, would create the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_as_such_and_nothing_runs(
    cli, run: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "the code ran"
    torch.save({"model": _RunsCode(marker)}, tmp_path / "evil.pt")
    result = cli("translate", "--run", run, "--checkpoint", tmp_path / "evil.pt", "--text", "hi")
    error_line(result, "evil.pt", "not a plain-tensor checkpoint", "asks to run", "not loaded")
    assert not marker.exists()


def test_changing_the_model_on_resume_is_refused_listing_the_keys(cli, run: Path) -> None:
    before = snapshot(run)
    result = cli("train", "--run-dir", run, "--resume",
                     "--set", "model.d_model=64", "model.num_heads=4")  # fmt: skip
    error_line(result, "model.d_model: 32 -> 64", "model.num_heads: 2 -> 4", "new run")
    assert snapshot(run) == before


def test_a_checkpoint_of_another_model_than_the_config_is_refused(cli, run: Path) -> None:
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    saved["model"]["d_ff"] = 128  # the config edited by hand after training
    (run / "config.yaml").write_text(yaml.safe_dump(saved), encoding="utf-8")
    before = snapshot(run)
    result = cli("train", "--run-dir", run, "--resume")
    error_line(result, "model.d_ff: 64 -> 128")
    assert snapshot(run) == before


def test_an_invalid_override_on_resume_changes_nothing(cli, run: Path) -> None:
    before = snapshot(run)
    result = cli("train", "--run-dir", run, "--resume", "--set", "training.lr=-1")
    error_line(result, "training.lr", "> 0")
    assert snapshot(run) == before


def test_config_with_resume_applies_its_changes_and_lists_them(
    cli, run: Path, tmp_path: Path
) -> None:
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    saved["model"]["src_vocab_size"] = saved["model"]["tgt_vocab_size"] = None
    saved["training"]["max_steps"] = 9
    config = tmp_path / "longer.yaml"
    config.write_text(yaml.safe_dump(saved), encoding="utf-8")
    result = cli("train", "--run-dir", run, "--resume", "--config", config)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training.max_steps: 6 -> 9" in result.stderr
    assert load_config(run / "config.yaml").training.max_steps == 9
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 9


@pytest.mark.parametrize(
    ("first", "first_stop", "then", "then_stop"),
    [
        ("max_steps=4", "max_steps (4)", "max_steps=6", "max_steps (6)"),
        ("max_epochs=1", "max_epochs (1)", "max_epochs=2", "max_epochs (2)"),
        ("max_time_minutes=1e-6", "max_time_minutes (1e-06)",
         "max_time_minutes=0.005", "max_time_minutes (0.005)"),
    ],
)  # fmt: skip
def test_a_new_limit_on_resume_lifts_the_old_one_and_the_last_log_line_names_it(
    tmp_path: Path, first: str, first_stop: str, then: str, then_stop: str
) -> None:
    config = tiny_config(tmp_path, training={"max_steps": 1000, "batch_tokens": 4000})
    run_dir = tmp_path / "run"
    argv = ["--config", str(config), "--run-dir", str(run_dir), "--set", f"training.{first}"]
    assert train_main(argv) == 0
    stopped = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
    assert log_lines(run_dir)[-1].endswith(f"reached training.{first_stop}")
    assert train_main(["--run-dir", str(run_dir), "--resume", "--set", f"training.{then}"]) == 0
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] > stopped
    assert log_lines(run_dir)[-1].endswith(f"reached training.{then_stop}")


def test_resuming_a_run_whose_limit_is_reached_stops_at_once(run: Path) -> None:
    before = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert train_main(["--run-dir", str(run), "--resume"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == before
    assert log_lines(run)[-1].endswith("reached training.max_steps (6)")


def test_early_stopping_is_named_in_the_last_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformer.training.trainer import Trainer, ValidationResult

    monkeypatch.setattr(Trainer, "validate", lambda self: ValidationResult(loss=1.0, perplexity=1))
    config = tiny_config(
        tmp_path, training={"max_steps": 40, "eval_every": 2, "early_stopping_patience": 2}
    )
    run_dir = tmp_path / "run"
    assert train_main(["--config", str(config), "--run-dir", str(run_dir)]) == 0
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 6
    assert log_lines(run_dir)[-1].endswith(
        "early stopping: no improvement in 2 validations (training.early_stopping_patience)"
    )


# =========================================================================== diverging


@pytest.mark.parametrize(
    ("key", "value"),
    [("lr", ".nan"), ("lr", ".inf"), ("label_smoothing", "-.inf"), ("clip_grad_norm", "1e999")],
)
def test_non_finite_numbers_in_a_config_are_refused_naming_the_key(
    cli, tmp_path: Path, key: str, value: str
) -> None:
    result = cli("train", "--config", tiny_config(tmp_path), "--run-dir", tmp_path / "r",
                 "--set", f"training.{key}={value}")  # fmt: skip
    error_line(result, f"training.{key}", "finite")
    assert not (tmp_path / "r").exists()


def test_a_non_finite_decoding_flag_is_refused(cli, run: Path) -> None:
    result = cli("translate", "--run", run, "--text", "hi", "--length-penalty", "nan")
    error_line(result, "--length-penalty", "finite")


def test_a_diverging_training_stops_saying_what_to_lower_and_saves_nothing_non_finite(
    run: Path,
) -> None:
    last = run / "checkpoints" / "last.pt"
    result = command("train", "--run-dir", run, "--resume", "--set", "training.max_steps=100",
                     "training.eval_every=1000", "training.lr=1e30")  # fmt: skip
    line = error_line(result, "diverged", "training.lr", "--resume --set training.lr=")
    assert "continue from " in line and "(step 6)" in line
    assert log_lines(run)[-1].endswith(": diverged")
    for path in (run / "checkpoints").glob("*.pt"):
        assert finite(load_checkpoint(path)), path
    assert load_checkpoint(last)["step"] == 6


def test_a_step_with_a_non_finite_loss_changes_nothing_and_training_goes_on(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformer.training.loss as loss_module

    calls, real = [], loss_module.projected_label_smoothed_loss

    def poisoned(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) in (2, 3) else loss

    monkeypatch.setattr(loss_module, "projected_label_smoothed_loss", poisoned)
    args = ["--run-dir", str(run), "--resume", "--set", "training.max_steps=10",
            "training.eval_every=1000"]  # fmt: skip
    assert train_main(args) == 0
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 10 and finite(state)
    assert state["progress"]["skipped_steps"] == 2
    assert state["progress"]["bad_steps_in_a_row"] == 0
    warnings = [line for line in log_lines(run) if "update skipped" in line]
    assert len(warnings) == 2 and "step 8: non-finite loss" in warnings[0]


def test_a_skipped_step_leaves_parameters_and_optimizer_as_they_were_with_a_grad_scaler(
    trained: Path,
) -> None:
    trainer = _trainer(trained)
    trainer.scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**4)
    batches = trainer.sampler.batches(0)
    trainer.train_step([batches[0]])
    parameters = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    steps = [s["step"].item() for s in trainer.optimizer.state_dict()["state"].values()][:1]
    poisoned = trainer.model.encoder.layers[0].parameters().__next__()
    with torch.no_grad():
        saved = poisoned.clone()
        poisoned.fill_(float("nan"))
    trainer.train_step([batches[1]])  # a non-finite loss: skipped
    with torch.no_grad():
        poisoned.copy_(saved)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, parameters[key]), key
    assert [s["step"].item() for s in trainer.optimizer.state_dict()["state"].values()][:1] == steps
    assert trainer.progress.bad_steps_in_a_row == 1
    trainer.train_step([batches[2]])  # the scaler is ready for the next step
    assert trainer.progress.bad_steps_in_a_row == 0


def test_non_finite_parameters_are_never_saved(trained: Path, tmp_path: Path) -> None:
    from transformer.training.divergence import DivergenceError

    trainer = _trainer(trained, tmp_path / "copy")
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("inf"))
    with pytest.raises(DivergenceError, match="non-finite"):
        trainer.save()
    assert not (tmp_path / "copy" / "checkpoints" / "last.pt").exists()


def _trainer(run_dir: Path, new_run_dir: Path | None = None):
    """A Trainer for the run's config and data (on the CPU), writing into `new_run_dir`."""
    from transformer.training.distributed import DistributedContext
    from transformer.training.run import build_model, prepare_data
    from transformer.training.trainer import Trainer

    config = load_config(run_dir / "config.yaml")
    data = prepare_data(config, run_dir, DistributedContext(), resume=True)
    model = build_model(config, config.training.seed, torch.device("cpu"))
    return Trainer(config, model, data.tokenizers, data.train, None, new_run_dir or run_dir,
                   torch.device("cpu"))  # fmt: skip


def _parser_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "ArgumentParser")
            or (isinstance(node.func, ast.Name) and node.func.id == "CommandParser")
        )
    ]


def test_every_command_line_parser_refuses_abbreviated_flags() -> None:
    files = [*(ROOT / "transformer").rglob("*.py"), *(ROOT / "scripts").glob("*.py")]
    files += [*(ROOT / "benchmarks").glob("*.py"), ROOT / "data" / "make_corpus.py"]
    calls = {path: _parser_calls(path) for path in files}
    assert sum(map(len, calls.values())) >= 7
    for name, found in calls.items():
        for call in found:
            keywords = {k.arg: k.value for k in call.keywords}
            where = f"{name.relative_to(ROOT)}:{call.lineno}"
            assert "allow_abbrev" in keywords, where
            assert ast.literal_eval(keywords["allow_abbrev"]) is False, where


def test_an_abbreviated_flag_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--conf", str(tiny_config(tmp_path)), "--run-dir", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --conf" in capsys.readouterr().err
