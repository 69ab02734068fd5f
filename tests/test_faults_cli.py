"""Signals and command-line errors, as a user meets them: each command, each way it can stop.

A closed terminal (SIGHUP) and `kill` (SIGTERM) stop a command as Ctrl-C does: training
saves where it is and says how to continue, any other command removes what it half wrote;
a Ctrl-C while a command is still importing is one line, not a traceback; a bad argument
is one `error:` line; the errors say what this command accepts.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tiny_runs import ENV, make_tiny_run, tiny_config

from transformer.cli.common import run_command
from transformer.cli.train import main as train_main
from transformer.config import TokenizerConfig, TrainingConfig
from transformer.data.tokenizer import TokenizerError, train_tokenizers
from transformer.training.checkpoint import load_checkpoint

COMMANDS = ["train", "translate", "evaluate", "average", "explain", "serve", "export"]


def training_config(tmp_path: Path, **training: object) -> Path:
    """The tiny config, logging every step; `training` updates its training section."""
    return tiny_config(tmp_path, training={"log_every": 1, **training})


def module_argv(program: str, *args: object) -> list[str]:
    return [sys.executable, "-m", f"transformer.cli.{program}", *map(str, args)]


def steps_logged(run_dir: Path) -> int:
    log = run_dir / "train.log"
    return log.read_text(encoding="utf-8").count(" epoch ") if log.exists() else 0


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen (exit code {process.poll()})")


def one_error_line(stderr: str) -> str:
    """The one `error:` line on stderr, checked: no traceback, no usage, at most log lines."""
    assert "Traceback" not in stderr and "usage:" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# ============================================================================ SIGHUP, SIGTERM


def test_sighup_stops_a_training_at_a_step_with_a_checkpoint_and_says_how_to_resume(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    argv = module_argv("train", "--config", training_config(tmp_path, max_steps=100_000),
                       "--run-dir", run_dir)  # fmt: skip
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for(lambda: steps_logged(run_dir) >= 2, process, "two training steps")
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGHUP, stderr
    step = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
    assert step >= 2
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted by SIGHUP: saved step {step} in {run_dir / 'checkpoints' / 'last.pt'}; "
        f"resume with: transformer-train --run-dir {run_dir} --resume"
    )


def test_closing_the_terminal_of_a_training_saves_a_checkpoint_and_exits_129(
    tmp_path: Path,
) -> None:
    pty = pytest.importorskip("pty")
    run_dir = tmp_path / "run"
    argv = module_argv("train", "--config", training_config(tmp_path, max_steps=100_000),
                       "--run-dir", run_dir)  # fmt: skip
    pid, terminal = pty.fork()  # the training's own terminal; closing it is a real hang-up
    if pid == 0:  # pragma: no cover - the child
        os.execve(sys.executable, argv, ENV)
    try:
        deadline = time.time() + 120
        while steps_logged(run_dir) < 2 and time.time() < deadline:
            try:  # what the training writes on its terminal, read so that it never blocks
                os.read(terminal, 65536)
            except OSError:
                break
    finally:
        os.close(terminal)
    _, status = os.waitpid(pid, 0)
    # Its final message finds no terminal to write on; the exit code still says SIGHUP.
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGHUP
    step = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
    last_log_line = (run_dir / "train.log").read_text(encoding="utf-8").splitlines()[-1]
    assert f"stopped at step {step} " in last_log_line
    assert last_log_line.endswith("interrupted by SIGHUP")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_a_translation_to_a_file_leaves_the_old_file_and_no_temporary_one(
    tmp_path: Path, signum: signal.Signals
) -> None:
    run = make_tiny_run(tmp_path / "run")
    output = tmp_path / "out.txt"
    output.write_text("the old translation\n", encoding="utf-8")
    argv = module_argv("translate", "--run", run, "--output", output)
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    # More than one chunk of lines, and the input stays open: a translation under way.
    process.stdin.write("how are you\ngood night\n" * 800)
    process.stdin.flush()
    stderr = ""
    while " loaded " not in stderr:
        line = process.stderr.readline()
        assert line, stderr
        stderr += line
    time.sleep(0.5)
    process.send_signal(signum)
    stderr += process.communicate(timeout=60)[1]
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == f"interrupted by {signum.name}"
    assert output.read_text(encoding="utf-8") == "the old translation\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.txt", "run"]


def test_a_command_gives_back_the_signal_handlers_it_found() -> None:
    numbers = (signal.SIGTERM, signal.SIGHUP)
    before = {number: signal.getsignal(number) for number in numbers}

    def inside(argv: list[str] | None) -> int:
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        return 0

    assert run_command(inside) == 0
    assert {number: signal.getsignal(number) for number in numbers} == before


# ================================================================================== Ctrl-C


def torch_loaded(pid: int) -> bool:
    """Whether the process has mapped torch's library: it is importing torch now."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("program", ["train", "translate"])
def test_ctrl_c_while_a_command_imports_is_one_line_and_exit_status_130(program: str) -> None:
    interrupted = 0
    for delay in (0.0, 0.1, 0.3):
        process = subprocess.Popen(
            module_argv(program, "--help"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            # As a terminal starts it, even where the tests run in the background (`cmd &`).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        wait_for(lambda: torch_loaded(process.pid), process, "importing torch")  # noqa: B023
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
        assert "Traceback" not in stderr, stderr
        if process.returncode == 0:  # the help was out before the Ctrl-C
            continue
        interrupted += not stdout
        assert process.returncode == -signal.SIGINT, stderr  # a shell shows 130
        assert stderr == "interrupted by SIGINT\n"
    assert interrupted, "no Ctrl-C landed while the command was importing"


AS_A_COMMAND = """
import os, signal, sys
sys.argv[0] = "/somewhere/bin/transformer-train"  # as the console script starts
import transformer.cli
"""


def test_a_ctrl_c_an_import_would_swallow_still_ends_the_command_at_once() -> None:
    # An import in C can swallow a KeyboardInterrupt (numpy's does) or, raised in a callback
    # from C++, turn it into an abort: the command ends in the handler, before either can.
    swallowing = "try:\n    os.kill(os.getpid(), signal.SIGINT)\n    signal.pause()\n"
    swallowing += "except KeyboardInterrupt:\n    pass\nprint('went on')\n"
    result = subprocess.run(
        [sys.executable, "-c", AS_A_COMMAND + swallowing],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert result.returncode == -signal.SIGINT, result.stderr
    assert result.stderr == "interrupted by SIGINT\n"
    assert result.stdout == ""


def test_a_program_that_imports_the_commands_keeps_pythons_ctrl_c() -> None:
    check = "import signal, transformer.cli.train\n"
    check += "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("before", ["import transformer.cli\n", AS_A_COMMAND])
def test_other_errors_at_the_top_keep_their_traceback_and_exit_status(before: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", before + "raise ValueError('a bug')"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ValueError: a bug" in result.stderr


# ======================================================================== argument errors


@pytest.mark.parametrize("program", COMMANDS)
def test_an_unknown_option_is_one_error_line_pointing_to_help_and_exit_2(
    program: str, capsys: pytest.CaptureFixture
) -> None:
    main = importlib.import_module(f"transformer.cli.{program}").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--no-such-option"])
    assert exit_info.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.endswith(f" (see transformer-{program} --help)")


def test_a_bad_option_value_is_one_error_line_naming_the_option(
    capsys: pytest.CaptureFixture,
) -> None:
    main = importlib.import_module("transformer.cli.translate").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--run", "run", "--beam-size", "x"])
    assert exit_info.value.code == 2
    assert one_error_line(capsys.readouterr().err) == (
        "error: argument --beam-size: invalid int value: 'x' (see transformer-translate --help)"
    )


@pytest.mark.parametrize("program", COMMANDS)
def test_help_still_prints_the_whole_usage(program: str, capsys: pytest.CaptureFixture) -> None:
    main = importlib.import_module(f"transformer.cli.{program}").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: transformer-{program} ") and "--help" in out


# ======================================================================= what the errors say


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_missing_training_device_suggests_the_config_key_train_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = training_config(tmp_path, max_steps=1)
    argv = ["--config", str(config), "--run-dir", str(tmp_path / "run")]
    assert train_main([*argv, "--set", "training.device=cuda"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "training.device" in line and "CUDA is not available" in line
    assert "use --set training.device=cpu or --set training.device=auto" in line
    assert "--device" not in line  # transformer-train has no such flag
    assert not (tmp_path / "run").exists()


def test_a_directory_given_as_tokenizer_model_file_is_named_a_directory(tmp_path: Path) -> None:
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "spm.model").write_bytes(b"")
    config = TokenizerConfig(model_file=str(folder))
    with pytest.raises(TokenizerError) as info:
        train_tokenizers(config, [], [], tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"tokenizer.model_file: {folder} is a directory; give the ")
    assert "not found" not in message
    assert message.endswith(f"e.g. {folder / 'spm.model'}")


def test_a_training_diverging_at_lr_1e6_suggests_an_lr_that_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = training_config(tmp_path, max_steps=50, lr=1e6)
    assert train_main(["--config", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "training diverged" in line and "training.lr (now 1e+06)" in line
    suggested = float(re.search(r"--set training\.lr=(\S+)$", line).group(1))
    # Not half of a value a million times too large: at most what a training starts from.
    assert suggested <= TrainingConfig().lr
